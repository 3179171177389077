"""Word-embedding tables trained on the CPU by the rows gradients reach, with dense AdamW's numbers.

A batch of a few hundred tokens reaches a few hundred rows of a 30,522-row vocabulary, yet with a
dense gradient every training step allocates and zeroes the table's whole gradient (47 MB for
MiniLM), adds it into the clipping norm, and runs AdamW over every row: on two cores a tenth of a
MiniLM step. With ``sparse=True`` an embedding's backward pass hands back only the rows its batch
looked up, and `RowSparseAdamW` updates the rows any gradient has reached so far.

From the same gradients the result is AdamW's, exactly (a sparse gradient sums a token repeated
in a batch in another order than the dense one does, so whole runs agree to rounding). A row no
gradient has ever reached has both moments at zero, so AdamW's update of it is the decoupled
weight decay alone: one multiplication of the whole table by ``1 - lr * weight_decay``, which is
what torch's fused kernel computes for it, bit for bit. Every row a gradient has reached keeps
moving on its moments even in steps whose batch missed it, so all of those rows go through torch's
fused AdamW kernel each step, with a zero gradient where this batch has none. Their moments are
kept packed, the reached rows' only; ``state_dict()`` gives AdamW's own dense ``exp_avg`` and
``exp_avg_sq``, so checkpoints load into either optimizer, and a loaded state is packed again by
its rows with a nonzero moment.

The shared trainer turns this on when it trains in one process on the CPU without ``--compile``;
GPUs, whose dense AdamW is already fast, are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

VOCABULARY_ROWS = 10_000  # tables at least this tall are vocabularies a batch touches a small part of


def vocabulary_embeddings(model: torch.nn.Module) -> list[torch.nn.Embedding]:
    """The trainable ``nn.Embedding`` tables of at least `VOCABULARY_ROWS` rows whose weight no
    other module holds (a tied language-model head would take dense gradients of it)."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            holders[id(parameter)] = holders.get(id(parameter), 0) + 1
    return [
        module for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= VOCABULARY_ROWS
        and module.weight.requires_grad and holders[id(module.weight)] == 1
    ]


@contextmanager
def sparse_gradients(embeddings: Iterable[torch.nn.Embedding]) -> Iterator[None]:
    """Inside, ``embeddings`` hand back sparse (row) gradients; their own setting comes back after."""
    embeddings = list(embeddings)
    before = [embedding.sparse for embedding in embeddings]
    for embedding in embeddings:
        embedding.sparse = True
    try:
        yield
    finally:
        for embedding, sparse in zip(embeddings, before):
            embedding.sparse = sparse


class _ReachedRows:
    """The AdamW moments of the rows of one table that gradients have reached, packed in the order
    they were first reached, and buffers for each step's rows of weights and gradients."""

    def __init__(self, parameter: torch.Tensor, exp_avg: torch.Tensor | None, exp_avg_sq: torch.Tensor | None) -> None:
        table_rows = parameter.shape[0]
        self.slot_of_row = torch.full((table_rows,), -1, dtype=torch.long, device=parameter.device)
        if exp_avg_sq is None:
            self.rows = torch.empty(0, dtype=torch.long, device=parameter.device)
            self.exp_avg = parameter.new_zeros((0, *parameter.shape[1:]))
            self.exp_avg_sq = parameter.new_zeros((0, *parameter.shape[1:]))
        else:  # from AdamW's dense state: a row whose moments are all zero is only decayed
            moving = exp_avg.reshape(table_rows, -1).ne(0) | exp_avg_sq.reshape(table_rows, -1).ne(0)
            self.rows = moving.any(dim=1).nonzero().squeeze(1)
            self.exp_avg, self.exp_avg_sq = exp_avg.index_select(0, self.rows), exp_avg_sq.index_select(0, self.rows)
        self.count = len(self.rows)
        self.slot_of_row[self.rows] = torch.arange(self.count, device=parameter.device)
        self.weights = torch.empty_like(self.exp_avg)
        self.gradients = torch.empty_like(self.exp_avg)

    def reach(self, rows: torch.Tensor) -> None:
        """Give each of ``rows`` not reached before a slot, with zero moments."""
        new = rows[self.slot_of_row[rows] < 0]
        if not len(new):
            return
        count = self.count + len(new)
        if count > len(self.rows):  # room for twice as many, so that growing costs little over a run
            capacity = min(2 * count, len(self.slot_of_row))
            self.rows = _grown(self.rows, capacity)
            self.exp_avg, self.exp_avg_sq = _grown(self.exp_avg, capacity), _grown(self.exp_avg_sq, capacity)
            self.weights, self.gradients = _grown(self.weights, capacity), _grown(self.gradients, capacity)
        self.rows[self.count:count] = new
        self.slot_of_row[new] = torch.arange(self.count, count, device=rows.device)
        self.count = count

    def dense(self, parameter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """AdamW's own state for the whole table: zero moments for the rows not reached."""
        rows = self.rows[: self.count]
        return tuple(torch.zeros_like(parameter).index_copy_(0, rows, moment[: self.count])
                     for moment in (self.exp_avg, self.exp_avg_sq))


def _grown(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    grown = tensor.new_zeros((rows, *tensor.shape[1:]))
    grown[: len(tensor)] = tensor
    return grown


class RowSparseAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` that also takes sparse row gradients (an ``nn.Embedding`` with
    ``sparse=True`` gives them) and then updates only the rows a gradient has reached (see the
    module's summary). Dense gradients go through AdamW's own step unchanged.

    The row path needs ``fused=True`` on the CPU, without amsgrad, maximize or a GradScaler's
    ``grad_scale``; otherwise a sparse gradient is made dense and AdamW steps as usual. While a
    table is trained by rows its moments are kept for the reached rows only; ``state_dict()``
    gives them as AdamW's dense ``exp_avg`` and ``exp_avg_sq``."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._reached: dict[torch.Tensor, _ReachedRows] = {}
        self._set_aside: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = []
        # Hooks rather than an overridden step(): torch wraps each optimizer class's step once with
        # the hooks' runner, and a subclass's step calling AdamW's could run them twice.
        self.register_step_pre_hook(RowSparseAdamW._set_aside_sparse_gradients)
        self.register_step_post_hook(RowSparseAdamW._step_rows)
        self.register_state_dict_post_hook(RowSparseAdamW._with_dense_moments)
        self.register_load_state_dict_post_hook(RowSparseAdamW._forget_reached_rows)

    @staticmethod
    def _row_path_fits(group: dict[str, Any], parameter: torch.Tensor, gradient: torch.Tensor,
                    kwargs: dict[str, Any]) -> bool:
        return (
            group.get("fused") is True and not group["amsgrad"] and not group["maximize"]
            and parameter.device.type == "cpu" and gradient.sparse_dim() == 1
            and kwargs.get("grad_scale") is None and kwargs.get("found_inf") is None
        )

    def _set_aside_sparse_gradients(self, args: tuple, kwargs: dict[str, Any]) -> None:
        for group in self.param_groups:
            for parameter in group["params"]:
                gradient = parameter.grad
                if gradient is None:
                    continue
                if gradient.is_sparse and self._row_path_fits(group, parameter, gradient, kwargs):
                    self._set_aside.append((parameter, gradient, group))
                    parameter.grad = None  # AdamW's own step skips it
                    continue
                if gradient.is_sparse:
                    parameter.grad = gradient.to_dense()
                reached = self._reached.pop(parameter, None)
                if reached is not None:  # AdamW's step takes it from here, with its own state
                    self.state[parameter]["exp_avg"], self.state[parameter]["exp_avg_sq"] = reached.dense(parameter)

    @torch.no_grad()
    def _step_rows(self, args: tuple, kwargs: dict[str, Any]) -> None:
        set_aside, self._set_aside = self._set_aside, []
        for parameter, gradient, group in set_aside:
            parameter.grad = gradient.coalesce()  # as AdamW leaves gradients: still readable until zeroed
            self._update_rows(parameter, parameter.grad, group)

    def _update_rows(self, parameter: torch.Tensor, gradient: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[parameter]
        reached = self._reached.get(parameter)
        if reached is None:
            reached = self._reached[parameter] = _ReachedRows(
                parameter, state.pop("exp_avg", None), state.pop("exp_avg_sq", None))
        if "step" not in state:  # as AdamW's fused step starts it
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device)
        rows, values = gradient.indices()[0], gradient.values()
        reached.reach(rows)
        count, index = reached.count, reached.rows[: reached.count]
        weights, gradients = reached.weights[:count], reached.gradients[:count]
        torch.index_select(parameter, 0, index, out=weights)
        gradients.zero_().index_copy_(0, reached.slot_of_row[rows], values.to(gradients.dtype))
        lr, weight_decay = group["lr"], group["weight_decay"]
        if weight_decay:  # the rows nothing has reached; those reached are written over below
            parameter.mul_(1 - lr * weight_decay)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(
            [weights], [gradients], [reached.exp_avg[:count]], [reached.exp_avg_sq[:count]], [], [state["step"]],
            lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=group["eps"],
            amsgrad=False, maximize=False,
        )
        parameter.index_copy_(0, index, weights)

    def _with_dense_moments(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        positions = {id(parameter): position for position, parameter in
                     enumerate(p for group in self.param_groups for p in group["params"])}
        for parameter, reached in self._reached.items():
            exp_avg, exp_avg_sq = reached.dense(parameter)
            position = positions[id(parameter)]
            state_dict["state"][position] = {**state_dict["state"][position], "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        return state_dict

    def _forget_reached_rows(self) -> None:
        self._reached.clear()  # the loaded state is AdamW's dense one; the next row step packs it again
