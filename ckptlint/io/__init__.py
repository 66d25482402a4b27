"""Reading checkpoints safely: formats, layouts, lazy tensor access."""

from ckptlint.io.checkpoint import Checkpoint, FileInfo, TensorRef
from ckptlint.io.dtypes import DTYPES, DType
from ckptlint.io.open import open_checkpoint
from ckptlint.io.unpickler import ALLOWLIST, PickleGlobal

__all__ = ["ALLOWLIST", "DTYPES", "Checkpoint", "DType", "FileInfo", "PickleGlobal", "TensorRef", "open_checkpoint"]
