"""Text in, text chunks out: the front end over the engine's thread (`frontend`: validation
once, tokenizing, chat, presets, discovery calls) and incremental detokenizing with stop strings
(`detokenize`), and Score and Sweep over it (`dose`).

Imports: `steering.engine`, `steering.discovery`, `steering.steer`, `steering.models` and the
domain. The one thing both transports call; knows no transport.
"""

from steering.frontend.dose import score, sweep
from steering.frontend.frontend import FrontEnd, ServedModel, TextChunk
from steering.frontend.logprobs import TokenLogprobs, TopLogprob

__all__ = ["FrontEnd", "ServedModel", "TextChunk", "TokenLogprobs", "TopLogprob", "score", "sweep"]
