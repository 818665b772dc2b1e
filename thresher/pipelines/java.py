"""Find a Java runtime for Spark before the JVM starts, with a clear error when there is none.

PySpark starts the JVM through `spark-submit`, which uses `$JAVA_HOME/bin/java` when
JAVA_HOME is set and `java` on PATH otherwise. A missing or broken Java then shows up as
"Java gateway process exited before sending its port number" (or a hang). We check first:

1. JAVA_HOME, when set, must hold an executable `bin/java` (a stale JAVA_HOME is an error,
   not silently skipped, so the user learns which Java Spark would have used);
2. otherwise Debian's OpenJDK 17 (`/usr/lib/jvm/java-17-openjdk-*`), which Spark 4 supports
   (another JDK, e.g. a newer Temurin, may be first on PATH on some machines);
3. otherwise `java` on PATH.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from thresher.specs import JobError

DEBIAN_JDK17 = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-17-openjdk-arm64",
                "/usr/lib/jvm/java-17-openjdk")
MIN_MAJOR = 17


def _java_of(home: str) -> Path:
    return Path(home) / "bin" / "java"


def java_major(java: str | os.PathLike[str]) -> int | None:
    """The major version `java -version` reports (None when it cannot be read)."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" -> 8


def find_java_home(env: dict[str, str] | None = None) -> str:
    """The JAVA_HOME Spark should use; raises JobError naming what was tried."""
    env = dict(os.environ) if env is None else env
    home = env.get("JAVA_HOME")
    if home:
        if not os.access(_java_of(home), os.X_OK):
            raise JobError(f"JAVA_HOME={home!r} holds no executable bin/java; Spark needs Java {MIN_MAJOR}+: "
                           f"point JAVA_HOME at a JDK (e.g. {DEBIAN_JDK17[0]}) or unset it")
        return home
    candidates = [p for p in DEBIAN_JDK17 if os.access(_java_of(p), os.X_OK)]
    candidates += sorted(glob.glob("/usr/lib/jvm/java-17-openjdk*"))
    for cand in candidates:
        if os.access(_java_of(cand), os.X_OK):
            return cand
    java = shutil.which("java", path=env.get("PATH", os.defpath))
    if java:
        return str(Path(os.path.realpath(java)).parent.parent)
    raise JobError(f"engine spark needs Java {MIN_MAJOR}+ but none was found (JAVA_HOME is unset, no "
                   f"{DEBIAN_JDK17[0]}, no `java` on PATH); install one (Debian: apt-get install "
                   f"openjdk-17-jre-headless) and/or set JAVA_HOME")


def ensure_java(env: dict[str, str] | None = None) -> str:
    """Set JAVA_HOME in `env` (default: os.environ) to a usable Java >= 17 and return it."""
    target = os.environ if env is None else env
    home = find_java_home(dict(target))
    major = java_major(_java_of(home))
    if major is None:
        raise JobError(f"{_java_of(home)} does not run (`java -version` failed); Spark needs Java {MIN_MAJOR}+")
    if major < MIN_MAJOR:
        raise JobError(f"{_java_of(home)} is Java {major}; Spark 4 needs Java {MIN_MAJOR}+ (set JAVA_HOME)")
    target["JAVA_HOME"] = home
    return home
