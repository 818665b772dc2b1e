"""Word lists used by the heuristic scorers.

`GOPHER_STOPWORDS` are the eight English words of the Gopher stop-word rule
(Rae et al. 2021, appendix A.1.1): a document must contain at least two of them.
Words are compared after lower-casing and trimming surrounding punctuation.
"""

from __future__ import annotations

GOPHER_STOPWORDS: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")

# Characters trimmed from both ends of a word before it is compared with a stop word or
# used as an n-gram element ("The," -> "the"). ASCII punctuation plus common typographic
# quotes, dashes and the ellipsis.
WORD_EDGE_PUNCTUATION: str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»‹›‘’‚‛“”„‟–—…¡¿·•"
