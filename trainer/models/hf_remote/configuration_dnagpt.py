"""DNAGPT configuration for Hugging Face transformers (written by dnafm; imports only transformers).

DNAGPT (Zhang et al. 2023, arXiv:2307.05628): a GPT-2-style pre-LayerNorm decoder without biases, learned
positions, a number embedding added at number slots and a regression head read at them.
"""

from transformers import PretrainedConfig


class DnaGptConfig(PretrainedConfig):
    model_type = "dnagpt"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(
        self,
        vocab_size: int = 15659,
        max_seq_len: int = 512,
        n_layer: int = 12,
        n_head: int = 12,
        d_model: int = 768,
        lm_head: str = "tied",
        gelu: str = "exact",
        layer_norm_eps: float = 1e-5,
        number_token_id: int = 18,
        **kwargs,
    ):
        # The base class first: transformers 5 fills its own fields with defaults in __init__.
        kwargs.setdefault("pad_token_id", 20)  # <P>
        kwargs["tie_word_embeddings"] = (
            False  # the tied head reads wte directly; nothing for transformers to tie
        )
        super().__init__(**kwargs)
        if lm_head not in ("tied", "mlp"):
            raise ValueError(f"lm_head must be 'tied' or 'mlp', got {lm_head!r}")
        if gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {gelu!r}")
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.n_layer = n_layer
        self.n_head = n_head
        self.d_model = d_model
        self.lm_head = lm_head  # 'tied': logits = h @ wte^T; 'mlp': the released checkpoints' untied MLP head
        self.gelu = gelu  # 'tanh': the released checkpoints' GELU approximation
        self.layer_norm_eps = layer_norm_eps
        self.number_token_id = number_token_id  # <M>: where num_values enter and numbers are read
