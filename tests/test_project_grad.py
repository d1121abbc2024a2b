"""famjax.layers.linear.project: its hand-written gradient equals autodiff
of the plain contraction (the independent reference) for the shapes the
model uses: one or two contracted dims, one or two output dims, x smaller
or larger than the output (both weight-gradient layouts), bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famjax.layers.linear import project


def plain(x, w, n_in):
  c = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
  return jax.lax.dot_general(x, w, (c, ((), ())))


@pytest.mark.parametrize("x_shape,w_shape,n_in", [
    ((3, 5, 8), (8, 16), 1),          # x smaller than y: dW = x^T dy
    ((3, 5, 16), (16, 8), 1),         # x larger: dW = (dy^T x)^T
    ((2, 5, 8), (8, 4, 6), 1),        # q projection: [d] -> [heads, hd]
    ((2, 5, 4, 6), (4, 6, 8), 2),     # o projection: [heads, hd] -> [d]
    ((7, 12), (12, 3), 1),            # one leading dim
])
def test_gradient_equals_autodiff(x_shape, w_shape, n_in):
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  y, vjp = jax.vjp(lambda a, b: project(a, b, n_in), x, w)
  y_ref, vjp_ref = jax.vjp(lambda a, b: plain(a, b, n_in), x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  dy = jax.random.normal(ky, y.shape)
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16():
  x = jax.random.normal(jax.random.key(1), (4, 6, 8), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(2), (8, 5), jnp.bfloat16)
  g = jax.grad(lambda a, b: jnp.sum(project(a, b, 1).astype(jnp.float32) ** 2),
               argnums=(0, 1))(x, w)
  g_ref = jax.grad(lambda a, b: jnp.sum(plain(a, b, 1).astype(jnp.float32) ** 2),
                   argnums=(0, 1))(x, w)
  for got, want in zip(g, g_ref):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=2e-2,
                               atol=2e-2)
