"""VecEnv: masks, observations, rewards, auto-reset and errors, on real random play."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MATE_IN_ONE
from rsshogi.core import Board

from keisei.env.vec_env import StepResult, VecEnv
from keisei.shogi import (
    NUM_ACTIONS,
    OBSERVATION_SHAPE,
    PLANE_NAMES,
    STARTPOS,
    Encoder,
    Game,
    IllegalMoveError,
    Result,
    Termination,
    _native,
    encode_observation,
    encode_observations,
    move_to_action,
    random_opening,
)
from keisei.shogi.actions import label_table
from keisei.shogi.encoding import MOVE_LAYOUT
from keisei.shogi.features import MATE_PLANE


def random_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(row)) for row in mask])


def legal_labels(game: Game) -> set[int]:
    return {move_to_action(m, game.turn.value) for m in game.legal_usi()}


REPEATED = [PLANE_NAMES.index("repeated_ge1"), PLANE_NAMES.index("repeated_ge2")]
WHITE_TO_MOVE = PLANE_NAMES.index("white_to_move")


def expected_planes(game: Game) -> np.ndarray:
    """The planes of ``game`` by an independent path: its SFEN's planes (no history), the repetition
    planes set from ``Game.repetitions``."""
    obs = encode_observation(game.sfen())
    obs[REPEATED[0]] = game.repetitions >= 1
    obs[REPEATED[1]] = game.repetitions >= 2
    return obs


def extra_planes(obs: np.ndarray) -> tuple[int, int, int]:
    """(white_to_move, repeated_ge1, repeated_ge2) of one observation, each plane checked to be uniform."""
    values = []
    for c in (WHITE_TO_MOVE, *REPEATED):
        (value,) = set(obs[c].reshape(81).tolist())
        values.append(value)
    return tuple(values)


#: Both kings step out and back: the start position recurs every 4 plies; its 4th occurrence,
#: after 12 plies, ends the game (sennichite).
KING_SHUFFLE = ["5i5h", "5a5b", "5h5i", "5b5a"]


def test_reset_shapes_and_masks() -> None:
    env = VecEnv(4)
    out = env.reset(seed=0)
    assert out.obs.shape == (4, 125, 9, 9) and out.obs.dtype == np.uint8
    assert out.legal_mask.shape == (4, 2187) and out.legal_mask.dtype == np.bool_
    assert (out.legal_mask.sum(axis=1) == 30).all()
    assert (out.to_play == 0).all()
    for game, row in zip(env.games, out.legal_mask):
        assert set(np.flatnonzero(row)) == legal_labels(game)


def test_random_play_keeps_masks_observations_and_rewards_consistent() -> None:
    env = VecEnv(8, max_plies=60, opening_plies=2)
    rng = np.random.default_rng(1)
    out = env.reset(seed=1)
    finished = 0
    for _ in range(400):
        movers = [g.turn for g in env.games]
        out = env.step(random_actions(out.legal_mask, rng))
        done = out.terminated | out.truncated
        assert not (out.terminated & out.truncated).any()
        assert (out.reward[~done] == 0).all()
        ended = env.pop_finished()
        assert len(ended) == done.sum()
        for i, game in zip(np.flatnonzero(done), ended):
            finished += 1
            assert game.is_over and game.termination == Termination(out.termination[i])
            winner = game.winner
            expected = 0.0 if winner is None else (1.0 if winner is movers[i] else -1.0)
            assert out.reward[i] == expected
            loser_view = 0.0 if winner is None else (1.0 if winner is movers[i].opponent else -1.0)
            assert out.reward[i] + loser_view == 0  # zero-sum per finished game
            assert out.truncated[i] == (game.termination is Termination.MAX_PLIES)
            assert np.array_equal(out.final_obs[i], expected_planes(game))
            assert env.games[i].ply == 2 and not env.games[i].is_over  # auto-reset, opening plies played
        for i, game in enumerate(env.games):
            assert set(np.flatnonzero(out.legal_mask[i])) == legal_labels(game)
            assert np.array_equal(out.obs[i], expected_planes(game))
            assert out.to_play[i] == (0 if game.turn == "b" else 1)
    assert finished >= 40


def test_checkmate_rewards_the_mating_move() -> None:
    env = VecEnv(2, start_sfen=MATE_IN_ONE)
    out = env.reset(seed=0)
    mate = move_to_action("G*5b", "b")
    quiet = move_to_action("5i4i", "b")
    # the mate planes of the environment's own encoding: the mating drop lands on 5b (square 37)
    assert [np.flatnonzero(out.obs[i, MATE_PLANE]).tolist() for i in range(2)] == [[mate % 81]] * 2 == [[37]] * 2
    out = env.step(np.array([mate, quiet]))
    # White to move after 5i4i (its view, rotated): no mate of its own, Black's G*5b still threatened
    assert not out.obs[1, MATE_PLANE].any() and np.flatnonzero(out.obs[1, MATE_PLANE + 2]).tolist() == [80 - 37]
    assert out.terminated.tolist() == [True, False]
    assert out.reward.tolist() == [1.0, 0.0]
    assert out.termination[0] == Termination.CHECKMATE
    (game,) = env.pop_finished()
    assert game.result is Result.BLACK_WIN and game.moves == ["G*5b"]
    assert env.games[0].sfen() == Game(MATE_IN_ONE).sfen()  # restarted from the start position


def test_max_plies_is_truncation_with_zero_reward() -> None:
    env = VecEnv(3, max_plies=4)
    rng = np.random.default_rng(0)
    out = env.reset(seed=0)
    for step in range(4):
        out = env.step(random_actions(out.legal_mask, rng))
        assert out.truncated.all() == (step == 3)
    assert not out.terminated.any() and (out.reward == 0).all()
    assert (out.termination == Termination.MAX_PLIES).all()
    assert all(g.ply == 0 for g in env.games)


def test_same_seed_same_openings() -> None:
    a, b = VecEnv(6, opening_plies=6), VecEnv(6, opening_plies=6)
    a.reset(seed=42)
    b.reset(seed=42)
    assert [g.moves for g in a.games] == [g.moves for g in b.games]
    assert len({tuple(g.moves) for g in a.games}) > 1  # openings differ between games
    b.reset(seed=43)
    assert [g.moves for g in a.games] != [g.moves for g in b.games]


def test_bad_actions_are_errors_naming_env_and_action() -> None:
    env = VecEnv(3)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(3, dtype=np.int64))
    out = env.reset(seed=0)
    good = np.flatnonzero(out.legal_mask[0])[0]
    before = [g.sfen() for g in env.games]
    with pytest.raises(IllegalMoveError, match=r"env 1: action 0 is not a legal move"):
        env.step(np.array([good, 0, good]))
    with pytest.raises(IllegalMoveError, match=r"env 2: action 5000"):
        env.step(np.array([good, good, 5000]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([good, good]))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.array([good, good, good], dtype=np.float32))
    assert [g.sfen() for g in env.games] == before  # nothing was played


def test_actions_of_any_integer_dtype_and_bad_ones_in_any_env() -> None:
    env = VecEnv(3)
    out = env.reset(seed=0)
    before = [g.sfen() for g in env.games]
    good = int(np.flatnonzero(out.legal_mask[0])[0])
    for bad, env_index in ((-1, 0), (2**40, 2), (NUM_ACTIONS, 1)):
        actions = [good, good, good]
        actions[env_index] = bad
        with pytest.raises(IllegalMoveError, match=rf"env {env_index}: action {bad} is outside 0..2186"):
            env.step(np.array(actions, dtype=np.int64))
    with pytest.raises(IllegalMoveError, match=r"env 2: action -1 is outside"):  # as int64, as before
        env.step(np.array([good, good, 2**64 - 1], dtype=np.uint64))
    assert [g.sfen() for g in env.games] == before  # nothing was played
    rng = np.random.default_rng(0)
    for dtype in (np.int16, np.uint16, np.int32, np.uint64):
        out = env.step(random_actions(out.legal_mask, rng).astype(dtype))
        for game, row in zip(env.games, out.legal_mask):
            assert set(np.flatnonzero(row)) == legal_labels(game)


def test_the_environment_makes_no_rsshogi_move_lists() -> None:
    """The environment's masks and moves come from the positions its encoder keeps: no game asks rsshogi
    for its list of legal moves (``Game.legal_moves`` stays unmade), and the moves picked for the actions
    are shared ``Move`` objects, one per move value."""
    env = VecEnv(4, max_plies=40, opening_plies=2)
    rng = np.random.default_rng(0)
    out = env.reset(seed=0)
    for _ in range(100):
        actions = random_actions(out.legal_mask, rng)
        picked = env._encoder.moves(actions)
        assert all(a is b for a, b in zip(picked, env._encoder.moves(actions)))
        out = env.step(actions)
        assert all(game._legal is None for game in env.games)
    assert env.pop_finished()


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        VecEnv(0)
    with pytest.raises(ValueError, match="opening_plies"):
        VecEnv(2, max_plies=10, opening_plies=10)
    with pytest.raises(ValueError, match="SFEN"):
        VecEnv(2, start_sfen="not a position")
    with pytest.raises(ValueError, match="already decided"):
        VecEnv(2, start_sfen="4k4/4G4/4P4/9/9/9/9/9/4K4 w - 1")


def test_openings_are_keyed_by_env_index_not_by_slice() -> None:
    whole = VecEnv(6, opening_plies=5)
    whole.reset(seed=11)
    tail = VecEnv(3, opening_plies=5, env_offset=3)
    tail.reset(seed=11)
    assert [g.moves for g in tail.games] == [g.moves for g in whole.games[3:]]
    head = VecEnv(2, opening_plies=5)
    head.reset(seed=11)
    assert [g.moves for g in head.games] == [g.moves for g in whole.games[:2]]
    # the next game of an env has its own key: (seed, env, 1)
    fresh = VecEnv(6, opening_plies=5)
    fresh.reset(seed=11)
    assert [fresh._new_game(i).moves for i in range(6)] != [g.moves for g in fresh.games]


def test_random_play_is_deterministic_and_resumes_exactly() -> None:
    def run(env: VecEnv, steps: int, seed: int) -> list[tuple]:
        rng, out, seen = np.random.default_rng(seed), env.current, []
        for _ in range(steps):
            out = env.step(random_actions(out.legal_mask, rng))
            seen.append((out.obs.copy(), out.reward.copy(), out.termination.copy()))
        return seen

    a, b = VecEnv(5, max_plies=20, opening_plies=3), VecEnv(5, max_plies=20, opening_plies=3)
    a.reset(seed=1)
    run(a, 50, seed=2)
    state = a.state_dict()
    assert sum(state["game_counts"]) > 5  # games ended and restarted
    b.load_state_dict(state)
    for x, y in zip(run(a, 60, seed=3), run(b, 60, seed=3)):
        assert all(np.array_equal(u, v) for u, v in zip(x, y))


def test_a_state_with_the_old_shared_generator_still_loads() -> None:
    env = VecEnv(3, max_plies=20, opening_plies=2)
    env.reset(seed=0)
    env.step(random_actions(env.current.legal_mask, np.random.default_rng(0)))
    old = {"games": env.state_dict()["games"], "rng": np.random.default_rng(7).bit_generator.state}
    twin = VecEnv(3, max_plies=20, opening_plies=2)
    out = twin.load_state_dict(old)
    assert [g.moves for g in twin.games] == [g.moves for g in env.games]
    assert np.array_equal(out.obs, env.current.obs)
    again = VecEnv(3, max_plies=20, opening_plies=2)
    again.load_state_dict(old)
    assert again.state_dict() == twin.state_dict()  # the openings to come are fixed by the old state


def test_buffers_are_written_in_place_and_checked() -> None:
    buffers = StepResult.allocate(4)
    env = VecEnv(4, buffers=buffers)
    out = env.reset(seed=0)
    assert out is buffers and (buffers.legal_mask.sum(axis=1) == 30).all()
    bad = StepResult(**{**vars(buffers), "reward": np.zeros(4, dtype=np.float64)})
    with pytest.raises(ValueError, match="reward"):
        VecEnv(4, buffers=bad)


def test_packed_sfen_planes_equal_sfen_planes() -> None:
    """The encoder reads rsshogi's packed SFEN; the SFEN parser is an independent path to the same planes,
    including positions with pieces in the box (handicap) and with more pieces in hand than planes. Both
    write the mate planes 0 (``fill_mate_planes`` sets them, from a board)."""
    rng = np.random.default_rng(3)
    starts = [None, MATE_IN_ONE, "lnsgkgsnl/9/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL w - 1",
              "8k/9/9/9/9/9/9/9/K8 b 2r2b4g4s4n4l18p 1"]
    sfens = []
    for start in starts:
        template = Game(start, max_plies=400)
        sfens += [random_opening(template, int(rng.integers(0, 150)), rng, tries=10_000).sfen() for _ in range(40)]
    packed = np.zeros((len(sfens), *OBSERVATION_SHAPE), dtype=np.uint8)
    turns = np.zeros(len(sfens), dtype=np.uint8)
    _native.encode_packed([Board(s).to_packed_sfen() for s in sfens], packed, turns)
    parsed = np.zeros_like(packed)
    _native.encode_planes(sfens, parsed, turns)
    assert np.array_equal(packed, parsed)
    mates = encode_observations(sfens)
    assert mates[:, MATE_PLANE].any() and not packed[:, MATE_PLANE:MATE_PLANE + 3].any()
    assert np.array_equal(np.delete(packed, range(MATE_PLANE, MATE_PLANE + 3), axis=1),
                          np.delete(mates, range(MATE_PLANE, MATE_PLANE + 3), axis=1))
    assert turns.tolist() == [0 if s.split()[1] == "b" else 1 for s in sfens]
    with pytest.raises(ValueError, match="packed SFEN"):
        _native.encode_packed([bytes(32)], packed[:1], turns[:1])


def test_masks_read_move_values_in_place() -> None:
    """The masks' fast path (reading each Move's value where the probe found it) is on, and agrees
    with asking each Move for its value."""
    assert MOVE_LAYOUT >= 0
    games = [random_opening(Game(), 30, np.random.default_rng(i)) for i in range(8)]
    encoder = Encoder(8)
    _, mask = encoder.encode(games)
    for game, row in zip(games, mask):
        assert set(np.flatnonzero(row)) == legal_labels(game)
    slow = np.zeros_like(mask)
    values = [[int(m) for m in g.legal_moves] for g in games]  # plain ints: the slow path
    _native.fill_masks(values, encoder.to_play, label_table(), slow, np.zeros(mask.shape, dtype=np.int16))
    assert np.array_equal(slow, mask)
    actions = np.array([np.flatnonzero(row)[-1] for row in mask])
    assert [m.to_usi() for m in encoder.moves(actions)] == [encoder.move(i, a).to_usi() for i, a in enumerate(actions)]


def shuffle_kings(env, steps: int, start: int = 0) -> list[tuple]:
    """Play ``KING_SHUFFLE`` (from its move ``start``) over and over in every env of ``env`` (a VecEnv
    or WorkerVecEnv): for each step, env 0's (white_to_move, repeated_ge1, repeated_ge2) planes, its
    final_obs planes when its game just ended, and its termination."""
    seen = []
    for ply in range(start, start + steps):
        usi = KING_SHUFFLE[ply % 4]
        action = move_to_action(usi, "b" if ply % 2 == 0 else "w")
        out = env.step(np.full(env.num_envs, action))
        assert (out.obs == out.obs[:1]).all()  # every env plays the same game
        final = extra_planes(out.final_obs[0]) if out.terminated[0] else None
        seen.append((extra_planes(out.obs[0]), final, Termination(out.termination[0])))
    return seen


#: What ``shuffle_kings`` sees over 13 plies: the position after ply p recurs at p + 4 and p + 8;
#: the 12th ply reaches the start position a 4th time: sennichite, its final planes "repeated twice
#: before", and the env restarts (a fresh game: nothing repeated).
SHUFFLE_SEEN = ([((p % 2, 0, 0), None, Termination.NONE) for p in (1, 0, 1)]
                + [((p % 2, 1, 0), None, Termination.NONE) for p in (0, 1, 0, 1)]
                + [((p % 2, 1, 1), None, Termination.NONE) for p in (0, 1, 0, 1)]
                + [((0, 0, 0), (0, 1, 1), Termination.SENNICHITE), ((1, 0, 0), None, Termination.NONE)])


def test_repetition_planes_follow_the_games_on_the_tracked_path() -> None:
    """VecEnv keeps positions in C and moves them along (``encode_tracked``); the repetition planes come
    from the games, also in the final planes of a game that ended by repetition."""
    env = VecEnv(3)
    out = env.reset(seed=0)
    assert extra_planes(out.obs[0]) == (0, 0, 0)
    assert shuffle_kings(env, 13) == SHUFFLE_SEEN
    game = env.pop_finished()[0]
    assert game.termination is Termination.SENNICHITE and game.repetitions == 3
    # a state replayed from its moves sees the same repetitions
    shuffle_kings(env, 8, start=1)  # the position after the first move, a 3rd time
    twin = VecEnv(3)
    out = twin.load_state_dict(env.state_dict())
    assert extra_planes(out.obs[0]) == (1, 1, 1)
    assert np.array_equal(out.obs, env.current.obs)


def test_repetition_planes_in_worker_processes() -> None:
    from keisei.env.workers import WorkerVecEnv

    with WorkerVecEnv(2, workers=2) as env:
        env.reset(seed=0)
        assert shuffle_kings(env, 13) == SHUFFLE_SEEN


def test_encode_and_tracked_encode_agree_on_repetitions() -> None:
    games = [Game(), Game(), Game(STARTPOS.replace(" b ", " w "))]
    for usi in KING_SHUFFLE * 2:
        games[1].push(usi)
    encoder = Encoder(3, track=True)
    fresh = encoder.encode(games)[0].copy()
    assert [extra_planes(o) for o in fresh] == [(0, 0, 0), (0, 1, 1), (1, 0, 0)]
    assert np.array_equal(encoder.encode_tracked(games)[0], fresh)
    out = np.zeros((3, *OBSERVATION_SHAPE), dtype=np.uint8)
    encoder.planes([0, 1, 2], out, games)
    assert np.array_equal(out, fresh)
    encoder.planes([1], out[:1])  # without the games: no repetition known
    assert extra_planes(out[0]) == (0, 0, 0)
