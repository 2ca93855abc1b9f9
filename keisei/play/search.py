"""Search at play time: batched PUCT Monte-Carlo tree search over the policy and value heads (optionally
with a Gumbel root), and a mate search.

``Search(policy, cfg).run(games)`` searches each game's position and answers a ``SearchResult``
per game (the move, the root value, a proven mate if any, the principal variation, visit counts).

- **Tree policy**: PUCT as in AlphaZero / dlshogi: a child is chosen by
  ``Q + c_puct * P * sqrt(N_parent) / (1 + N_child)``; unvisited children get the parent's
  value minus ``FPU_REDUCTION`` as their Q (first-play urgency).
- **Gumbel root** (``cfg.root = gumbel``; Danihelka et al., 2022, "Policy improvement by planning
  with Gumbel"): Gumbel root, PUCT below. With ``cfg.gumbel_noise`` the root draws Gumbel noise
  ``g`` (from the search's seeded generator; without it ``g = 0`` and the search is deterministic),
  takes the ``cfg.gumbel_actions`` moves of the highest ``g + logits`` and runs Sequential Halving
  over the playout budget: ``ceil(log2 m)`` phases, each splitting its share (at least a playout per
  candidate while the budget lasts) evenly (round-robin)
  among the candidates left and then keeping the better half by ``g + logits + sigma(q)``
  (``sigma``: mctx's completed Q-values, min-max rescaled and scaled by
  ``(c_visit + max_b N(b)) * c_scale``). The move played is the surviving candidate with the
  highest such score (``_GumbelRoot``); the improved policy ``softmax(logits + sigma(q))``
  (``improved_policy``) is the result's training target (``SearchResult.policy``).
- **Batched leaves**: every round, each tree descends ``cfg.batch_size`` times, with a virtual
  loss on the edges taken so that the descents spread over different leaves; all the new leaves
  of all the trees searched together (e.g. every game of a match where this player is to move)
  go through ONE ``Policy.logits_and_value`` forward pass. A descent that meets a leaf already
  waiting in the batch is undone and not counted, and ends that tree's round. Trees only share
  the forward pass, so a game's search does not depend on the other games searched with it
  (except through the root noise, Dirichlet or Gumbel: one generator, drawn in the games' order).
- **Rules** come from ``keisei.shogi.Game``: each descent copies the root game and plays the
  path with ``Game.play_line`` (which adjudicates the position reached as ``Game.play`` would),
  so repetition draws, perpetual-check losses, declarations and the ply limit are scored by the
  same adjudication as real games. No make/unmake: every descent plays on its own copy (costs:
  docs/search.md and ``benchmarks/search.py``).
- **Mate search** (``cfg.mate_plies``): at the root a shortest-first AND/OR search over checks
  (``find_mate``) proves mates of up to ``mate_plies`` plies; a proven mate is played without
  consulting the net. Every new leaf is tested for a mate in one (rsshogi's solver) before it
  is sent to the net, and root moves that allow a mate in one are excluded while a safe move
  exists. Proven wins and losses propagate up the tree (``SearchResult.mate``).
- **Tree reuse** (``cfg.reuse_tree``): the subtree of the position reached (up to two plies
  after a previous search of the same game) is kept between calls.

Values are in [-1, 1] from the side to move's view, as the value head's. With the same seed,
the same calls give the same moves (a time limit makes the number of simulations vary).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from rsshogi.core import Board, Move
from rsshogi.types import RepetitionState

from keisei.config import SearchConfig, SearchRoot
from keisei.nn.policy import Policy
from keisei.shogi import Encoder, Game

VIRTUAL_LOSS = 1.0  # visits counted as losses on the edges of a descent waiting for the net
FPU_REDUCTION = 0.2  # unvisited children: the parent's value minus this
MAX_EXPANDED_NODES = 400_000  # per tree (about 1.5 GB); a search stops growing its tree there
MATE_SEARCH_NODES = 100_000  # moves made by one root mate search before it gives up
_TINY_PRIOR = 1e-45  # a prior of 0 (float32 underflow) as a logit: log of this
RESCALE_EPSILON = 1e-8  # sigma: the smallest denominator of the min-max rescaling (mctx's epsilon)

_NO_REPETITION = RepetitionState.NONE

Key = tuple[str, tuple[str, ...], int, bool]


@dataclass
class Limits:
    """When a search stops: the first of ``simulations`` playouts per game (None: no limit),
    ``deadline`` (a ``time.monotonic()`` instant; None: none) and ``stop`` being set. Another
    thread may set ``stop`` or change ``deadline`` / ``simulations`` while the search runs."""

    simulations: int | None = None
    deadline: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class SearchResult:
    """What a search found for one game."""

    move: str  # the move to play (USI)
    value: float  # expected result of ``move`` for the side to move, in [-1, 1]
    mate: int | None  # plies to a proven end: > 0 the side to move wins, < 0 it loses; None: unproven
    pv: list[str]  # principal variation (USI), starting with ``move``
    visits: dict[str, int]  # root move -> visits
    values: dict[str, float]  # root move -> its value for the side to move (visited or proven moves)
    nodes: int  # playouts of this search (network evaluations and proven or terminal leaves)
    seldepth: int  # deepest descent of this search
    elapsed_s: float
    # root=gumbel: every legal root move -> its probability in the improved policy
    # softmax(logits + sigma(completed q)) (``improved_policy``); after a mate proven by the root mate
    # search, 1 on the mate and 0 elsewhere. None with the PUCT root.
    policy: dict[str, float] | None = None

    @property
    def depth(self) -> int:
        return len(self.pv)

    @property
    def nps(self) -> int:
        return int(self.nodes / self.elapsed_s) if self.elapsed_s > 0 else 0


class Node:
    """A position in the tree. Expanded nodes hold, per legal move (in label order): the prior,
    visits ``n`` and total value ``w`` (both from this node's side to move, virtual losses
    included while descents are pending), and ``status``: +1 the move is proven to win, -1 to
    lose, 0 unknown, with ``plies`` to the end through it."""

    __slots__ = ("children", "legal", "lost", "mate", "n", "order", "pending", "plies", "prior", "proof", "q",
                 "status", "terminal", "value", "visits", "w")

    def __init__(self) -> None:
        self.legal: list[Move] | None = None  # the game's legal moves (None: not expanded)
        self.order: np.ndarray | None = None  # child k is legal[order[k]]
        self.prior = self.n = self.w = self.q = self.status = self.plies = np.empty(0)
        self.lost = False  # some move is proven to lose
        self.children: list[Node | None] = []
        self.visits = 0.0
        self.value = 0.0  # the net's value of the position
        self.terminal: float | None = None  # the game is over here: its result for the side to move
        self.proof: tuple[int, int] | None = None  # (+1 win / -1 loss for the side to move, plies to the end)
        self.pending = False  # waiting in the current batch for the net
        self.mate: Move | None = None  # the mate in one found at this leaf

    def end(self, game: Game) -> None:
        """Score this leaf by the result of ``game`` (its position), which is over."""
        winner = game.winner
        self.terminal = 0.0 if winner is None else 1.0 if winner is game.turn else -1.0
        if winner is not None:
            self.proof = (int(self.terminal), 0)

    @property
    def expanded(self) -> bool:
        return self.legal is not None

    def expand(self, legal: list[Move], order: np.ndarray, prior: np.ndarray, value: float) -> None:
        m = len(order)
        self.legal, self.order, self.prior, self.value = legal, order, prior, value
        self.n = np.zeros(m)
        self.w = np.zeros(m)
        self.q = np.full(m, value - FPU_REDUCTION)  # w / n of visited moves; first-play urgency for the others
        self.status = np.zeros(m, dtype=np.int8)
        self.plies = np.zeros(m, dtype=np.int32)
        self.children = [None] * m

    def move(self, k: int) -> Move:
        assert self.legal is not None and self.order is not None
        return self.legal[self.order[k]]

    def add(self, k: int, visits: float, value: float) -> None:
        """Count ``visits`` more on move ``k`` worth ``value`` in all (negative to undo)."""
        n = self.n[k] + visits
        self.n[k] = n
        w = self.w[k] + value
        self.w[k] = w
        self.q[k] = w / n if n > 0 else self.value - FPU_REDUCTION
        self.visits += visits

    def update_proof(self) -> tuple[int, int] | None:
        """Proven when a move wins (the quickest) or every move loses (the slowest)."""
        self.lost = bool((self.status == -1).any())
        wins = self.status == 1
        if wins.any():
            self.proof = (1, int(self.plies[wins].min()))
        elif (self.status == -1).all():
            self.proof = (-1, int(self.plies.max()))
        return self.proof


def _logits(prior: np.ndarray) -> np.ndarray:
    """Logits of ``prior`` (its log, up to a constant); a prior of 0 gets the log of a tiny one."""
    return np.log(np.maximum(prior, _TINY_PRIOR))


def completed_q(node: Node) -> np.ndarray:
    """The completed Q-values of ``node``'s moves, from its side to move's view, in [-1, 1] (mctx's
    ``qtransform_completed_by_mix_value`` before its rescaling and scaling). A move proven won or
    lost (``status``: by the rules, a mate in one in the tree, or the root's mate-in-one exclusion)
    is +1 / -1, visited or not; another visited move's is its mean value ``w / n``; the other
    unvisited moves get ``v_mix = (v + N * sum_b pi(b) q(b) / sum_b pi(b)) / (N + 1)``, with ``v``
    the network's value of the node, ``N`` the visits of its moves, the sums over the visited moves
    (their completed values) and ``pi`` the prior (floored at the smallest float, as mctx does);
    no visit: ``v_mix = v``. Expects no descent pending (virtual losses would count)."""
    n = node.n
    visited = n > 0
    q = np.where(visited, node.w / np.maximum(n, 1.0), 0.0)
    proven = node.status != 0
    q[proven] = node.status[proven]
    total = float(n.sum())
    mixed = node.value
    if total > 0:
        weights = np.maximum(node.prior[visited], np.finfo(np.float64).tiny)
        mixed = (node.value + total * float(weights @ q[visited]) / float(weights.sum())) / (total + 1.0)
    q[~visited & ~proven] = mixed
    return q


def sigma(node: Node, c_visit: float, c_scale: float) -> np.ndarray:
    """``sigma(q)`` of ``node``'s moves as mctx computes it: the completed Q-values (``completed_q``)
    min-max rescaled to [0, 1] over the node's moves (denominator at least ``RESCALE_EPSILON``),
    times ``(c_visit + max_b N(b)) * c_scale``. Sequential Halving and the policy target both use it."""
    q = completed_q(node)
    low = float(q.min())
    rescaled = (q - low) / max(float(q.max()) - low, RESCALE_EPSILON)
    return (c_visit + float(node.n.max(initial=0.0))) * c_scale * rescaled


def improved_policy(node: Node, c_visit: float, c_scale: float) -> np.ndarray:
    """The Gumbel search's policy target over ``node``'s moves (float64, sums to 1):
    ``softmax(logits + sigma(q))`` (``sigma``), the logits those of the node's prior."""
    z = _logits(node.prior) + sigma(node, c_visit, c_scale)
    z -= z.max()
    p = np.exp(z)
    return p / p.sum()


class _GumbelRoot:
    """The root of one search with ``root=gumbel`` (Danihelka et al., 2022): the candidates are the
    ``m`` moves not proven lost with the highest ``g + logits`` (``g``: Gumbel noise); the playout
    budget is spent by Sequential Halving over them. Each of ``ceil(log2 m)`` phases takes its
    share of the playouts left (rounded up), but at least one per candidate left while the budget
    lasts (as the paper's ``max(1, floor(n / (m log2 m)))`` visits each: with fewer than
    ``m * ceil(log2 m)`` playouts the first phases take more than their share), splits it evenly
    among the candidates left, visited round-robin (the better-scored first), then keeps the
    better half (rounded up) by
    ``g + logits + sigma(q)`` (``sigma``, the function the policy target uses too); after the last
    phase one is left: the move. ``noise`` is ``g`` (zeros: no noise).

    A phase ends (``settle``) only between rounds, when no descent is pending, so virtual losses
    never enter a comparison. When every candidate is proven lost, new candidates are drawn among
    the other moves with the playouts left."""

    def __init__(self, root: Node, noise: np.ndarray, cfg: SearchConfig, budget: int) -> None:
        self.root = root
        self.m = cfg.gumbel_actions
        self.c_visit, self.c_scale = cfg.gumbel_c_visit, cfg.gumbel_c_scale
        self.base = noise + _logits(root.prior)  # g + logits (up to a constant)
        self.left = max(budget, 0)  # playouts of the plan not yet made
        self.candidates = np.empty(0, dtype=np.intp)  # root moves still in the halving, the best first
        self.phases = 0  # phases left, this one included (0: the plan is over)
        self.quota = self.count = np.empty(0, dtype=np.int64)  # per candidate: this phase's descents, made
        self.cursor = 0  # round-robin position in ``candidates``
        self._next = 0
        self._sample()

    def _sample(self) -> None:
        """Candidates: the top ``m`` of ``g + logits`` among the moves not proven lost; plan the playouts left."""
        open_moves = np.flatnonzero(self.root.status != -1)
        self.candidates = open_moves[np.argsort(-self.base[open_moves], kind="stable")][:self.m]
        count = len(self.candidates)
        self.phases = 0 if count == 0 else max(1, math.ceil(math.log2(count)))
        if self.phases:
            self._start_phase()

    def _start_phase(self) -> None:
        count = len(self.candidates)
        share = min(max(-(-self.left // self.phases), count), self.left)
        each, extra = divmod(share, count)
        self.quota = np.full(count, each, dtype=np.int64)
        self.quota[:extra] += 1
        self.count = np.zeros(count, dtype=np.int64)
        self.cursor = 0

    @property
    def done(self) -> bool:
        return self.phases == 0

    def next(self) -> int | None:
        """The root move of the next descent (round-robin over the candidates with descents left in
        this phase, skipping proven losses), or None: the phase is over (or the plan is)."""
        count = len(self.candidates)
        if self.done:
            return None
        status = self.root.status
        for i in range(count):
            j = (self.cursor + i) % count
            if self.count[j] < self.quota[j] and status[self.candidates[j]] != -1:
                self._next = j
                return int(self.candidates[j])
        return None

    def made(self) -> None:
        """The descent of the move ``next`` returned was made (not undone)."""
        j = self._next
        self.count[j] += 1
        self.left -= 1
        self.cursor = j + 1

    def settle(self) -> None:
        """Between rounds: at the end of a phase keep the better half (at the end of the last, the move)."""
        while not self.done and self.next() is None:
            self.phases -= 1
            live = self.live()
            if len(live) == 0:  # every candidate proven lost: draw again among the other moves
                self._sample()
                continue
            keep = 1 if self.phases == 0 else -(-len(live) // 2)
            self.candidates = live[np.argsort(-self.scores(live), kind="stable")][:keep]
            if self.phases:
                self._start_phase()

    def live(self) -> np.ndarray:
        """The candidates not proven lost."""
        return self.candidates[self.root.status[self.candidates] != -1]

    def scores(self, moves: np.ndarray) -> np.ndarray:
        """``g + logits + sigma(q)`` of ``moves`` (no descent pending)."""
        return self.base[moves] + sigma(self.root, self.c_visit, self.c_scale)[moves]


@dataclass
class _Tree:
    """One game's search in a ``run``."""

    game: Game  # a copy of the root position (with its history)
    root: Node
    key: Key
    prior: np.ndarray | None = None  # root priors with noise, for this search
    gumbel: _GumbelRoot | None = None  # root=gumbel: the root's Sequential Halving
    mate: tuple[Move, int] | None = None  # a mate proven by the root mate search
    nodes: int = 0
    expanded: int = 0
    seldepth: int = 0


@dataclass
class _Leaf:
    tree: _Tree
    node: Node
    path: list[tuple[Node, int]]
    game: Game


class _MateBudget(Exception):
    pass


def find_mate(board: Board, max_plies: int, node_limit: int = MATE_SEARCH_NODES) -> tuple[Move, int] | None:
    """The first move and length of the shortest forced mate in at most ``max_plies`` plies for the
    side to move of ``board``, or None. Mate in one from rsshogi's solver; longer ones by an
    AND/OR search over checks, deepening two plies at a time. A line through a repeated position
    is not counted (it could be a draw or a perpetual-check loss). ``board`` is left as it was."""
    if max_plies < 1:
        return None
    mate = board.solve_mate_in_one()
    if mate is not None:
        return mate.to_move(), 1
    budget = [node_limit]
    for plies in range(3, max_plies + 1, 2):
        try:
            move = _attack(board, plies, budget)
        except _MateBudget:
            return None
        if move is not None:
            return move, plies
    return None


def _attack(board: Board, plies: int, budget: list[int]) -> Move | None:
    """A check after which every defence is mated within ``plies - 1`` plies, or None."""
    if plies == 1:
        mate = board.solve_mate_in_one()
        return mate.to_move() if mate is not None else None
    for move in board.legal_moves():
        budget[0] -= 1
        if budget[0] < 0:
            raise _MateBudget
        board.push_move(move)
        try:
            if board.is_in_check() and board.repetition_state() == _NO_REPETITION and _defend(board, plies - 1, budget):
                return move
        finally:
            board.pop()
    return None


def _defend(board: Board, plies: int, budget: list[int]) -> bool:
    """Whether every legal reply of the side in check is mated within ``plies - 1`` plies."""
    for reply in board.legal_moves():  # none: checkmated
        budget[0] -= 1
        if budget[0] < 0:
            raise _MateBudget
        board.push_move(reply)
        try:
            if board.repetition_state() != _NO_REPETITION or _attack(board, plies - 1, budget) is None:
                return False
        finally:
            board.pop()
    return True


def _key(game: Game) -> Key:
    return game.start_sfen, tuple(game.moves), game.max_plies, game.declaration


class Search:
    """Batched PUCT search with ``policy`` (see the module docstring). One ``Search`` per player:
    it keeps the trees of its last two ``run`` calls for reuse (in a match a player's calls alternate
    between the games where it has Black and those where it has White, so a game comes back every other
    call) and its own random generator (Dirichlet noise, moves sampled at ``cfg.temperature``, the
    Gumbel root's noise with ``cfg.gumbel_noise``)."""

    def __init__(self, policy: Policy, cfg: SearchConfig, *, device: torch.device | str | None = None,
                 seed: int = 0) -> None:
        self.policy = policy
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else policy.device
        self.reseed(seed)
        self.encoder = Encoder(max(cfg.batch_size, 1))
        self._trees: dict[Key, Node] = {}  # the last call's trees, by game history
        self._older: dict[Key, Node] = {}  # the trees of the call before it

    def reseed(self, seed: int) -> None:
        """Restart the random generator (noise, sampled moves) from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Forget the kept trees (a new game)."""
        self._trees, self._older = {}, {}

    # --- the search -----------------------------------------------------------------------
    @torch.no_grad()
    def run(self, games: Sequence[Game], limits: Limits | None = None, *,
            on_info: Callable[[SearchResult], None] | None = None, info_interval_s: float = 1.0
            ) -> list[SearchResult]:
        """Search every game (each must still be running) and choose its move.

        ``limits`` default: ``cfg.simulations`` playouts per game. ``on_info`` is called with the
        first game's result so far every ``info_interval_s`` (not after the last round).

        With ``root=gumbel`` the Sequential Halving plans ``limits.simulations`` playouts (without a
        playout limit: ``cfg.simulations``) and the search ends with the plan; a time limit or ``stop``
        that comes first plays the best candidate still in the halving."""
        if limits is None:
            limits = Limits(simulations=self.cfg.simulations)
        start = time.monotonic()
        self.policy.model.eval()
        keys = [_key(game) for game in games]
        trees = self._trees_for(games, keys)
        work = list(trees.values())
        self._start_roots(work, limits)
        self._run_rounds(work, limits, start, on_info, info_interval_s)
        elapsed = time.monotonic() - start
        if self.cfg.reuse_tree:
            self._trees = {key: tree.root for key, tree in trees.items() if tree.root.expanded}
        return [self._result(trees[key], elapsed, sample=True) for key in keys]

    def _trees_for(self, games: Sequence[Game], keys: list[Key]) -> dict[Key, _Tree]:
        """One tree per distinct game (the same position with the same history is searched once), on
        its kept subtree if any; the last call's other trees are kept one call more, older ones dropped."""
        trees: dict[Key, _Tree] = {}
        for game, key in zip(games, keys):
            if game.is_over:
                raise ValueError(f"cannot search a finished game ({game.termination.name.lower()}): {game.sfen()}")
            if key not in trees:
                trees[key] = _Tree(game.copy(), self._reused(key), key)
        self._older, self._trees = self._trees, {}
        return trees

    def _start_roots(self, work: list[_Tree], limits: Limits) -> None:
        """The root mate searches; then the network on the new roots (a new root's expansion is the first
        playout) and each unproven root's priors and plan (``_prepare_root``)."""
        for tree in work:
            if self.cfg.mate_plies >= 1:
                plies_left = tree.game.max_plies - tree.game.ply
                tree.mate = find_mate(tree.game.board.copy(), min(self.cfg.mate_plies, plies_left))
        roots = [_Leaf(t, t.root, [], t.game) for t in work if t.mate is None and not t.root.expanded]
        self._expand_leaves(roots)
        for leaf in roots:
            leaf.tree.nodes += 1
        planned = limits.simulations if limits.simulations is not None else self.cfg.simulations
        for tree in work:
            if tree.mate is None:
                self._prepare_root(tree, planned - tree.nodes)

    def _run_rounds(self, work: list[_Tree], limits: Limits, start: float,
                    on_info: Callable[[SearchResult], None] | None, info_interval_s: float) -> None:
        """Rounds of descents, each batch of new leaves through one forward pass, until every tree is
        done, ``stop`` is set or the next round would end past the deadline (as long as the last one)."""
        last_info = start
        round_s = 0.0
        while True:
            for tree in work:
                if tree.gumbel is not None:
                    tree.gumbel.settle()  # no descent pending here: a phase that is over halves
            active = [t for t in work if self._running(t, limits)]
            now = time.monotonic()
            if not active or limits.stop.is_set() or (limits.deadline is not None and now + round_s > limits.deadline):
                return
            batch: list[_Leaf] = []
            for tree in active:
                budget = self.cfg.batch_size
                if limits.simulations is not None:
                    budget = min(budget, limits.simulations - tree.nodes)
                self._collect(tree, budget, batch)
            self._expand_leaves(batch)
            round_s = time.monotonic() - now
            if on_info is not None and time.monotonic() - last_info >= info_interval_s:
                last_info = time.monotonic()
                on_info(self._result(work[0], last_info - start, sample=False))

    def _running(self, tree: _Tree, limits: Limits) -> bool:
        return (tree.mate is None and tree.root.proof is None and tree.expanded < MAX_EXPANDED_NODES
                and (limits.simulations is None or tree.nodes < limits.simulations)
                and (tree.gumbel is None or not tree.gumbel.done))

    def _reused(self, key: Key) -> Node:
        """The kept subtree of ``game``'s position (searched before, up to two plies earlier), or a new node."""
        if not self.cfg.reuse_tree:
            return Node()
        start, moves, max_plies, declaration = key
        for back in range(3):
            if back > len(moves):
                break
            earlier = (start, moves[:len(moves) - back], max_plies, declaration)
            node = self._trees.get(earlier, self._older.get(earlier))
            if node is None:
                continue
            for usi in moves[len(moves) - back:]:
                child = None
                if node.expanded:
                    k = next((k for k in range(len(node.children)) if node.move(k).to_usi() == usi), None)
                    child = node.children[k] if k is not None else None
                if child is None:
                    return Node()
                node = child
            return node if node.expanded and node.terminal is None and not node.pending else Node()
        return Node()

    def _prepare_root(self, tree: _Tree, budget: int) -> None:
        """Root priors for this search (with Dirichlet noise when asked; not with a Gumbel root,
        whose noise is its own) and, with the mate search on, root moves that allow a mate in one
        marked as lost; then with ``root=gumbel`` the candidates and a plan for ``budget`` playouts."""
        root, cfg = tree.root, self.cfg
        tree.prior = root.prior
        gumbel = cfg.root == SearchRoot.gumbel
        if not gumbel and cfg.dirichlet_fraction > 0 and len(root.prior) > 1:
            noise = self.rng.dirichlet(np.full(len(root.prior), cfg.dirichlet_alpha))
            tree.prior = (1 - cfg.dirichlet_fraction) * root.prior + cfg.dirichlet_fraction * noise
        if cfg.mate_plies >= 1 and tree.game.ply + 2 <= tree.game.max_plies:
            board = tree.game.board.copy()
            for k in range(len(root.status)):
                if root.status[k] != 0:
                    continue
                board.push_move(root.move(k))
                if (board.repetition_state() == _NO_REPETITION and board.legal_moves()
                        and board.solve_mate_in_one() is not None):
                    root.status[k], root.plies[k] = -1, 2
                board.pop()
            root.update_proof()
        if gumbel:
            m = len(root.prior)
            noise = self.rng.gumbel(size=m) if cfg.gumbel_noise else np.zeros(m)
            tree.gumbel = _GumbelRoot(root, noise, cfg, budget)

    def _collect(self, tree: _Tree, descents: int, batch: list[_Leaf]) -> None:
        """Up to ``descents`` descents of ``tree``: new leaves join ``batch`` (virtual loss on their
        path), finished or proven leaves are backed up at once."""
        c_puct, vl, plan = self.cfg.c_puct, VIRTUAL_LOSS, tree.gumbel
        for _ in range(descents):
            node, path, moves = tree.root, [], []
            forced = None  # a Gumbel root: the candidate this descent visits
            if plan is not None:
                forced = plan.next()
                if forced is None:  # the phase's descents are all made: it halves once their values are back
                    return
            while node.expanded and node.terminal is None and node.proof is None:
                if forced is not None and not path:
                    k = forced
                else:
                    score = (tree.prior if node is tree.root else node.prior) / (1.0 + node.n)
                    score *= c_puct * math.sqrt(max(node.visits, 1.0))
                    score += node.q
                    if node.lost:
                        score[node.status == -1] = -np.inf
                    k = int(score.argmax())
                node.add(k, vl, -vl)
                path.append((node, k))
                moves.append(node.move(k))
                child = node.children[k]
                if child is None:
                    child = node.children[k] = Node()
                node = child
            if node.pending:  # already waiting in this batch: undo the virtual loss, try no further
                for parent, k in path:
                    parent.add(k, -vl, vl)
                return
            if plan is not None and path:
                plan.made()
            game = tree.game.copy()
            game.play_line(moves)  # the positions on the way are known to be running
            if game.is_over and node.terminal is None:
                node.end(game)
            tree.nodes += 1
            tree.seldepth = max(tree.seldepth, len(path))
            if node.terminal is not None:
                self._backup(path, node.terminal, node.proof)
            elif node.proof is not None:
                self._backup(path, float(node.proof[0]), node.proof)
            elif self.cfg.mate_plies >= 1 and game.ply < game.max_plies and (mate := game.board.solve_mate_in_one()):
                node.proof, node.mate = (1, 1), mate.to_move()
                self._backup(path, 1.0, node.proof)
            else:
                node.pending = True
                batch.append(_Leaf(tree, node, path, game))

    def _expand_leaves(self, batch: list[_Leaf]) -> None:
        """Run the network on the leaves of ``batch`` in one forward pass: expand each with its priors
        and back its value up."""
        if not batch:
            return
        if len(batch) > self.encoder.capacity:
            self.encoder = Encoder(len(batch))
        obs, mask = self.encoder.encode([leaf.game for leaf in batch])
        logits, values = self.policy.logits_and_value(torch.from_numpy(obs).to(self.device),
                                                      torch.from_numpy(mask).to(self.device))
        # The policy's own distribution (illegal labels have probability 0), renormalised in float64.
        # A value beyond a win (the shaping potentials: model.material_potential, king_potential) counts as a win.
        probs, values_np = torch.softmax(logits, dim=1).cpu().numpy(), values.clamp(-1.0, 1.0).cpu().numpy()
        for j, leaf in enumerate(batch):
            labels = np.flatnonzero(mask[j])
            prior = probs[j, labels].astype(np.float64)
            prior /= prior.sum()
            value = float(values_np[j])
            leaf.node.expand(leaf.game.legal_moves, self.encoder.index[j, labels].astype(np.intp), prior, value)
            leaf.node.pending = False
            leaf.tree.expanded += 1
            self._backup(leaf.path, value, None)

    @staticmethod
    def _backup(path: list[tuple[Node, int]], value: float, proof: tuple[int, int] | None) -> None:
        """Back ``value`` (the leaf's side to move's view) up ``path``, removing the virtual loss;
        a proof of the leaf marks the edges above it and proves ancestors where it decides them."""
        vl = VIRTUAL_LOSS
        for node, k in reversed(path):
            value = -value
            node.add(k, 1.0 - vl, value + vl)
            if proof is not None:
                node.status[k], node.plies[k] = -proof[0], proof[1] + 1
                proof = node.update_proof()

    # --- the answer -----------------------------------------------------------------------
    def _result(self, tree: _Tree, elapsed: float, *, sample: bool) -> SearchResult:
        root = tree.root
        if tree.mate is not None:
            move, plies = tree.mate
            usi = move.to_usi()
            return SearchResult(usi, 1.0, plies, [usi], {usi: 0}, {usi: 1.0}, tree.nodes, plies, elapsed,
                                self._target(tree))
        k = self._choose(tree, sample)
        usi = [root.move(i).to_usi() for i in range(len(root.n))]
        values = {usi[i]: float(root.status[i]) if root.status[i] else float(root.w[i] / root.n[i])
                  for i in range(len(root.n)) if root.status[i] or root.n[i] > 0}
        mate = int(root.status[k]) * int(root.plies[k]) if root.status[k] else None
        return SearchResult(usi[k], values.get(usi[k], root.value), mate, self._pv(root, k),
                            {usi[i]: int(root.n[i]) for i in range(len(root.n))}, values, tree.nodes,
                            tree.seldepth, elapsed, self._target(tree))

    def _target(self, tree: _Tree) -> dict[str, float] | None:
        """``SearchResult.policy``: with the Gumbel root, the improved policy over the root's legal moves
        (a mate proven by the root mate search: all on the mate); None with the PUCT root."""
        if self.cfg.root != SearchRoot.gumbel:
            return None
        if tree.mate is not None:
            mate = tree.mate[0].to_usi()
            return {move: float(move == mate) for move in tree.game.legal_usi()}
        root = tree.root
        target = improved_policy(root, self.cfg.gumbel_c_visit, self.cfg.gumbel_c_scale)
        return {root.move(i).to_usi(): float(p) for i, p in enumerate(target)}

    def _choose(self, tree: _Tree, sample: bool) -> int:
        """The root move: a proven win (the quickest), else among moves not proven lost the most
        visited (ties: the higher prior), or one sampled from visits^(1/T) in the first
        ``temperature_moves`` plies; when every move loses, the slowest loss. With a Gumbel root,
        instead of the visits: the candidate still in the halving with the highest
        ``g + logits + sigma(q)`` (the temperature is not used)."""
        root, cfg = tree.root, self.cfg
        status = root.status
        if (status == 1).any():
            wins = np.flatnonzero(status == 1)
            return int(wins[np.argmin(root.plies[wins])])
        if (status == -1).all():
            return int(np.argmax(root.plies))
        if tree.gumbel is not None and len(live := tree.gumbel.live()):
            return int(live[np.argmax(tree.gumbel.scores(live))])
        allowed = np.flatnonzero(status != -1)
        if sample and cfg.temperature > 0 and tree.game.ply < cfg.temperature_moves:
            weights = root.n[allowed] ** (1.0 / cfg.temperature)
            if weights.sum() <= 0:
                weights = root.prior[allowed]
            return int(allowed[self.rng.choice(len(allowed), p=weights / weights.sum())])
        best = np.lexsort((-root.prior[allowed], -root.n[allowed]))[0]
        return int(allowed[best])

    @staticmethod
    def _pv(root: Node, k: int) -> list[str]:
        pv = [root.move(k).to_usi()]
        node = root.children[k]
        while node is not None and node.expanded and node.terminal is None and node.n.sum() > 0:
            wins = np.flatnonzero(node.status == 1)
            k = int(wins[np.argmin(node.plies[wins])]) if len(wins) else int(np.argmax(node.n))
            pv.append(node.move(k).to_usi())
            node = node.children[k]
        if node is not None and node.mate is not None:
            pv.append(node.mate.to_usi())
        return pv
