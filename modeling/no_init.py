"""transformers' `no_init_weights`, wherever the installed line keeps it."""

try:
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4.x
    from transformers.modeling_utils import no_init_weights

__all__ = ["no_init_weights"]
