"""The FastInst decoder and its parts."""

from fastinst.modeling.decoder.fastinst_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    FastInstDecoder,
    build_transformer_decoder,
)
from fastinst.modeling.decoder.query_proposal import QueryProposal

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "FastInstDecoder",
    "QueryProposal",
    "build_transformer_decoder",
]
