import itertools

import jax
import jax.random as jr
import pytest
import torch


# As Equinox's own tests: the library must never rely on implicit promotion.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# threefry's initialisation compiles slowly on CPU; rbg keeps the suite fast.
jax.config.update("jax_default_prng_impl", "rbg")
torch.set_num_threads(1)


@pytest.fixture
def getkey():
    """A function returning a fresh PRNG key at every call."""
    counter = itertools.count()
    return lambda: jr.key(next(counter))
