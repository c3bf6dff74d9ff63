"""kernels: Triton kernels beside their torch references, behind ops that pick one per device.

Knows nothing of datapipe's shards or of the trainer; both models call these ops.
"""

from kernels.attention import attention_probs, attention_ref, fused_attention
from kernels.embedding import token_embedding
from kernels.kmer_embedding import kmer_embedding, kmer_embedding_ref, kmer_ids, kmer_ids_ref

__all__ = [
    "attention_probs",
    "attention_ref",
    "fused_attention",
    "kmer_embedding",
    "kmer_embedding_ref",
    "kmer_ids",
    "kmer_ids_ref",
    "token_embedding",
]
