"""Recurrent layers over sequences (Elman, GRU), with back-propagation through time written out.

A recurrent layer maps x^(k-1) = (x_1, ..., x_T), shape (T, C) per sample, to x^(k) = h_T of
shape (H,), or to the whole sequence (h_1, ..., h_T) of shape (T, H) with return_sequence=True.
One cell with the parameters w^(k) runs at every step, from h_0 = 0:

    a_{t,k} = W_k x_t + U_k h_{t-1} + b_k   (the cell's affine maps k; W_k or U_k may be absent)
    h_t = F(a_t, h_{t-1})                    (entrywise)

Unrolled in time this is a network of T layers that share w^(k), so its gradient is the notes'
backward recursion (2)-(3) run over the time steps: back-propagation through time (BPTT). Let
g_t = dl/dh_t be the row vector of the total derivative through every later step, and gbar_t the
output's own g at step t (row t of g = dl/dx^(k) when the sequence is returned; g itself at
t = T and 0 before when only h_T is). Then for t = T, ..., 1

    g_t = gbar_t + g_{t+1} dh_{t+1}/dh_t       (3), with g_{T+1} dh_{T+1}/dh_T = 0,
    dl/dx_t = g_t dh_t/dx_t,   dl/dw^(k) = sum_t g_t dh_t/dw^(k)     (2), summed over t,

where dh_t/dx_t and dh_t/dw^(k) are the local derivatives of step t alone (h_{t-1} held fixed).
Because F is entrywise, every local Jacobian is a diagonal matrix times an affine map's matrix.
With the vectors D_{t,k} = dh_t/da_{t,k} (the diagonal) and E_t = the diagonal of dF/dh_{t-1}
(the direct path, 0 for Elman):

    dh_t/dh_{t-1} = diag(E_t) + sum_k diag(D_{t,k}) U_k,     dh_t/dx_t = sum_k diag(D_{t,k}) W_k,
    dh_{t,i}/d(W_k)_qj = delta_iq D_{t,k,i} x_{t,j},   dh_{t,i}/d(U_k)_qj = delta_iq D_{t,k,i}
    h_{t-1,j},   dh_{t,i}/d(b_k)_q = delta_iq D_{t,k,i}

(the notes' dense + point-activation Jacobians, appendix B, once per affine map). Each cell
derives its D and E beside its forward code. `vjp` applies them in closed form to a batch of row
vectors: delta_{t,k} = g_t * D_{t,k} (= dl/da_{t,k}), g_{t-1} = gbar_{t-1} + g_t * E_t +
sum_k delta_{t,k} U_k, dl/dx_t = sum_k delta_{t,k} W_k, and dl/dW_k = sum_t sum_n
delta_{t,k}^T x_t (U_k with h_{t-1}, b_k with 1): a `lax.scan(reverse=True)` over the
activations stored by the forward scan, not autodiff of the forward. `jacobians` runs the same
recursion with the explicit matrices above and a matrix G_t = dx^(k)/dh_t (out_shape + (H,)) in
place of the row vector g_t.

Parameters have rows indexed by output, as in `Dense`: W_k (H, C), U_k (H, H), b_k (H,).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet import activations as act
from jaxnet.layers.base import Layer, default_float

glorot_normal = jax.nn.initializers.glorot_normal()
orthogonal = jax.nn.initializers.orthogonal()
zeros = jax.nn.initializers.zeros


class AffineMap(NamedTuple):
    """The leaf names of a_k = W_k x_t + U_k h_{t-1} + b_k; W or U is None where absent."""

    W: str | None
    U: str | None
    b: str


class Cell(NamedTuple):
    """A recurrent cell h_t = F(a_t, h_{t-1}) with entrywise F, and F's diagonal derivatives."""

    name: str
    maps: Mapping[str, AffineMap]
    step: Callable  # ({k: a_k}, h_prev) -> (h_t, activations stored for the backward pass)
    diagonals: Callable  # (stored, h_prev, h_t) -> ({k: D_k}, E or None), entrywise


# ------------------------------------------------------------------------------ the cells


def _elman_step(a, h_prev):
    """h_t = tanh(a_t), a_t = W x_t + U h_{t-1} + b."""
    return act.tanh(a["a"]), ()


def _elman_diagonals(stored, h_prev, h_t):
    """dh_t/da_t = diag(1 - h_t^2), and h_{t-1} enters only through a_t (E = 0).

    So dh_t/dh_{t-1} = diag(1 - h_t^2) U and dh_t/dx_t = diag(1 - h_t^2) W.
    """
    return {"a": 1 - h_t**2}, None


ELMAN = Cell("Elman", {"a": AffineMap("W", "U", "b")}, _elman_step, _elman_diagonals)


def _gru_step(a, h_prev):
    """r = sigma(a_r), z = sigma(a_z), n = tanh(a_n + r * a_m), h_t = (1 - z) n + z h_{t-1}.

    a_r = W_r x + U_r h + b_r, a_z = W_z x + U_z h + b_z, a_n = W_n x + b_in, a_m = U_n h + b_hn.
    """
    r, z = act.sigmoid(a["r"]), act.sigmoid(a["z"])
    n = act.tanh(a["n"] + r * a["m"])
    return (1 - z) * n + z * h_prev, (r, z, n, a["m"])


def _gru_diagonals(stored, h_prev, h_t):
    """The chain rule through h_t = (1 - z) n + z h_{t-1}, entry by entry.

    dh/dn = 1 - z and dn/d(a_n + r a_m) = 1 - n^2, so D_n = (1 - z)(1 - n^2), D_m = D_n r and
    D_r = D_n a_m r (1 - r); dh/dz = h_{t-1} - n, so D_z = (h_{t-1} - n) z (1 - z); the direct
    path is E = z.
    """
    r, z, n, a_m = stored
    d_n = (1 - z) * (1 - n**2)
    return {
        "r": d_n * a_m * r * (1 - r),
        "z": (h_prev - n) * z * (1 - z),
        "n": d_n,
        "m": d_n * r,
    }, z


GRU_CELL = Cell(
    "GRU",
    {
        "r": AffineMap("W_r", "U_r", "b_r"),
        "z": AffineMap("W_z", "U_z", "b_z"),
        "n": AffineMap("W_n", None, "b_in"),
        "m": AffineMap(None, "U_n", "b_hn"),
    },
    _gru_step,
    _gru_diagonals,
)


# ------------------------------------------------------------------ forward and checks


def _input_matrix(cell, params):
    return params[next(m.W for m in cell.maps.values() if m.W)]


def _check_input(cell, params, x):
    W = _input_matrix(cell, params)
    if x.ndim != 3 or x.shape[2] != W.shape[1] or x.shape[1] < 1:
        raise ValueError(
            f"{cell.name} layer with input matrices of shape {W.shape} expects input "
            f"(N, T, {W.shape[1]}) with T >= 1, got {x.shape}"
        )


def _pre_activations(cell, params, inputs_t, h_prev):
    """a_{t,k}: the input terms W_k x_t + b_k computed before the scan, plus U_k h_{t-1}."""
    a = {}
    for k, m in cell.maps.items():
        a_k = inputs_t[k] if m.W else params[m.b][None, :]
        a[k] = (a_k + h_prev @ params[m.U].T) if m.U else a_k
    return a


def forward_over_time(cell, params, x):
    """Forward propagation over the steps, time-major: x_t, h_{t-1}, h_t and stored activations.

    The input terms W_k x_t + b_k of all steps are one product before the scan; only the
    recurrent terms are sequential.
    """
    xs = jnp.swapaxes(x, 0, 1)  # (T, N, C)
    inputs = {
        k: xs @ params[m.W].T + params[m.b][None, None, :] for k, m in cell.maps.items() if m.W
    }
    hidden = params[next(iter(cell.maps.values())).b].shape[0]
    dtype = jnp.result_type(x, *jax.tree_util.tree_leaves(params))
    h_0 = jnp.zeros((x.shape[0], hidden), dtype)

    def step(h_prev, inputs_t):
        h_t, stored = cell.step(_pre_activations(cell, params, inputs_t, h_prev), h_prev)
        return h_t, (h_t, stored)

    _, (hs, stored) = jax.lax.scan(step, h_0, inputs)
    return xs, jnp.concatenate([h_0[None], hs[:-1]]), hs, stored


def _output(hs, return_sequence):
    return jnp.swapaxes(hs, 0, 1) if return_sequence else hs[-1]


# ------------------------------------------------------------------- back-propagation


def _own_gradients(g, hs, return_sequence):
    """gbar_t: the output's own dl/dh_t at each step, time-major (T, N, H)."""
    if return_sequence:
        return jnp.swapaxes(g, 0, 1)
    return jnp.zeros_like(hs).at[-1].set(g)


def bptt(cell, params, x, g, return_sequence):
    """Back-propagation through time for a batch of row vectors g = dl/dx^(k) (module docstring).

    Returns (dl/dw summed over the batch and the steps, dl/dx per sample).
    """
    xs, h_prevs, hs, stored = forward_over_time(cell, params, x)

    def back(g_later, step):  # g_later = g_{t+1} dh_{t+1}/dh_t
        h_prev, h_t, stored_t, g_own = step
        g_t = g_own + g_later  # (3)
        D, E = cell.diagonals(stored_t, h_prev, h_t)
        delta = {k: g_t * D[k] for k in D}  # dl/da_{t,k}
        g_prev = jnp.zeros_like(g_t) if E is None else g_t * E
        for k, m in cell.maps.items():
            if m.U:
                g_prev = g_prev + delta[k] @ params[m.U]
        return g_prev, delta

    g_own = _own_gradients(g, hs, return_sequence)
    _, deltas = jax.lax.scan(
        back, jnp.zeros_like(hs[0]), (h_prevs, hs, stored, g_own), reverse=True
    )
    grads, g_x = {}, jnp.zeros_like(xs)
    for k, m in cell.maps.items():  # (2): the local parameter derivatives summed over t and n
        grads[m.b] = jnp.sum(deltas[k], axis=(0, 1))
        if m.U:
            grads[m.U] = jnp.einsum("tni,tnj->ij", deltas[k], h_prevs)
        if m.W:
            grads[m.W] = jnp.einsum("tni,tnj->ij", deltas[k], xs)
            g_x = g_x + deltas[k] @ params[m.W]
    return grads, jnp.swapaxes(g_x, 0, 1)


def step_jacobians(cell, params, x_t, h_prev, h_t, stored_t):
    """One step's local Jacobians as matrices: dh_t/dh_{t-1}, dh_t/dx_t and dh_t/dw (a dict)."""
    D, E = cell.diagonals(stored_t, h_prev, h_t)
    eye = jnp.eye(h_t.shape[0], dtype=h_t.dtype)
    J_h = jnp.zeros_like(eye) if E is None else eye * E[None, :]
    J_x = jnp.zeros((h_t.shape[0], x_t.shape[0]), h_t.dtype)
    J_w = {}
    for k, m in cell.maps.items():
        diag = eye * D[k][:, None]
        J_w[m.b] = diag
        if m.U:
            J_h = J_h + D[k][:, None] * params[m.U]
            J_w[m.U] = diag[:, :, None] * h_prev[None, None, :]
        if m.W:
            J_x = J_x + D[k][:, None] * params[m.W]
            J_w[m.W] = diag[:, :, None] * x_t[None, None, :]
    return J_h, J_x, J_w


def bptt_jacobians(cell, params, x_n, return_sequence):
    """The recursion of `bptt` with explicit matrices for one sequence x_n (T, C).

    G_t = dx^(k)/dh_t replaces g_t. Returns (J_params, J_x) in jax.jacrev's layout.
    """
    xs, h_prevs, hs, stored = jax.tree_util.tree_map(
        lambda a: a[:, 0], forward_over_time(cell, params, x_n[None])
    )
    steps, hidden = hs.shape
    out_shape = (steps, hidden) if return_sequence else (hidden,)
    eye = jnp.eye(hidden, dtype=hs.dtype)
    if return_sequence:  # d x^(k) / d h_t directly: the identity at output row t
        own = jnp.eye(steps, dtype=hs.dtype)[:, :, None, None] * eye[None, None, :, :]
    else:
        own = jnp.zeros((steps, hidden, hidden), hs.dtype).at[-1].set(eye)

    def back(carry, step):
        G_later, J_w = carry
        x_t, h_prev, h_t, stored_t, G_own = step
        G = G_own + G_later  # (3)
        J_h, J_x, J_w_t = step_jacobians(cell, params, x_t, h_prev, h_t, stored_t)
        J_w = jax.tree_util.tree_map(lambda J, L: J + jnp.tensordot(G, L, axes=1), J_w, J_w_t)
        return (jnp.tensordot(G, J_h, axes=1), J_w), jnp.tensordot(G, J_x, axes=1)  # (2)

    J_w0 = jax.tree_util.tree_map(lambda p: jnp.zeros(out_shape + p.shape, hs.dtype), params)
    carry0 = (jnp.zeros(out_shape + (hidden,), hs.dtype), J_w0)
    (_, J_w), J_x = jax.lax.scan(back, carry0, (xs, h_prevs, hs, stored, own), reverse=True)
    return J_w, jnp.moveaxis(J_x, 0, -2)  # (T,) + out_shape + (C,) -> out_shape + (T, C)


# ------------------------------------------------------------------------- the layers


def _check_hyper_parameters(name, hidden, return_sequence):
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ValueError(f"{name} hidden must be a positive int, got {hidden!r}")
    if not isinstance(return_sequence, bool):
        raise TypeError(f"{name} return_sequence must be a bool, got {return_sequence!r}")


def recurrent_layer(cell, hidden, return_sequence, W_init, U_init, b_init) -> Layer:
    """The layer that runs `cell` over a sequence, with BPTT as its vjp and jacobians."""
    _check_hyper_parameters(cell.name, hidden, return_sequence)

    def init(key, input_shape):
        if len(input_shape) != 2 or input_shape[0] < 1:
            raise ValueError(
                f"{cell.name} expects a sequence input shape (T, C) with T >= 1, "
                f"got {tuple(input_shape)}"
            )
        steps, channels = input_shape
        dtype = default_float()
        shapes = {}
        for m in cell.maps.values():
            shapes[m.b] = (b_init, (hidden,), False)
            if m.W:  # fan-in-first for the initialiser, then rows by output
                shapes[m.W] = (W_init, (channels, hidden), True)
            if m.U:
                shapes[m.U] = (U_init, (hidden, hidden), True)
        keys = jax.random.split(key, len(shapes))
        params = {}
        for k, (leaf, (f, shape, transpose)) in zip(keys, sorted(shapes.items())):
            params[leaf] = f(k, shape, dtype).T if transpose else f(k, shape, dtype)
        return ((steps, hidden) if return_sequence else (hidden,)), params

    def apply(params, x, *, key=None):
        _check_input(cell, params, x)
        return _output(forward_over_time(cell, params, x)[2], return_sequence)

    def jacobians(params, x, n, *, key=None):
        _check_input(cell, params, x)
        return bptt_jacobians(cell, params, x[n], return_sequence)

    def vjp(params, x, g, *, key=None):
        _check_input(cell, params, x)
        expected = (x.shape[0],) + ((x.shape[1], hidden) if return_sequence else (hidden,))
        if g.shape != expected:
            raise ValueError(f"{cell.name} vjp expects g of shape {expected}, got {g.shape}")
        return bptt(cell, params, x, g, return_sequence)

    spec = {"hidden": hidden, "return_sequence": return_sequence}
    return Layer(cell.name.lower(), init, apply, jacobians, vjp, spec)


def Elman(
    hidden: int,
    return_sequence: bool = False,
    W_init=glorot_normal,
    U_init=orthogonal,
    b_init=zeros,
) -> Layer:
    """Elman recurrent layer: h_0 = 0, h_t = tanh(W x_t + U h_{t-1} + b), on input (N, T, C).

    Output h_T (N, H), or (h_1, ..., h_T) as (N, T, H) with return_sequence=True.
    Params {"W": (H, C), "U": (H, H), "b": (H,)}. W_init is called with the fan-in-first shape
    (C, H) and U_init with (H, H), and both results are transposed, as in `Dense`.
    """
    return recurrent_layer(ELMAN, hidden, return_sequence, W_init, U_init, b_init)


def GRU(
    hidden: int,
    return_sequence: bool = False,
    W_init=glorot_normal,
    U_init=orthogonal,
    b_init=zeros,
) -> Layer:
    """Gated recurrent unit in the PyTorch (torch.nn.GRU) and flax.linen.GRUCell convention.

    From h_0 = 0, on input (N, T, C):

        r = sigma(W_r x_t + U_r h_{t-1} + b_r)             reset gate
        z = sigma(W_z x_t + U_z h_{t-1} + b_z)             update gate
        n = tanh(W_n x_t + b_in + r * (U_n h_{t-1} + b_hn)) candidate
        h_t = (1 - z) * n + z * h_{t-1}

    Params {"W_r", "W_z", "W_n": (H, C); "U_r", "U_z", "U_n": (H, H); "b_r", "b_z", "b_in",
    "b_hn": (H,)}. PyTorch's two biases of r and of z add up to b_r and b_z; b_in and b_hn are
    its bias_ih and bias_hh of n. Cho et al. (2014) apply the reset gate before the recurrent
    product, n = tanh(W_n x_t + U_n (r * h_{t-1})), with no bias inside; here (as in cuDNN,
    PyTorch and flax) it scales U_n h_{t-1} + b_hn, so r cannot be folded into U_n. Both weigh
    the old state by z. Output and initialisers as in `Elman`.
    """
    return recurrent_layer(GRU_CELL, hidden, return_sequence, W_init, U_init, b_init)
