/*
 * keisei.shogi._native: the hot path of observation and legal-mask encoding.
 *
 * rsshogi owns the rules (move generation, legality, repetition). This module
 * only turns what rsshogi hands out -- SFEN strings and lists of legal Move
 * objects -- into the fixed arrays a network consumes, for a whole batch in one
 * call, so that the per-step Python work of the vectorised environment stays small.
 *
 * Frame: everything is written from the side to move's point of view. For White
 * the board is rotated 180 degrees (square s becomes 80 - s) and the hands are
 * swapped, so "own" pieces always move towards rank index 0. Square index
 * s = file_index * 9 + rank_index (file_index 0 is file 1, rank_index 0 is rank a),
 * the same numbering as rsshogi's Square.value and the dlshogi move labels.
 *
 * The plane layout is documented in docs/observations.md and mirrored by
 * keisei/shogi/features.py (PLANE_NAMES); keep the three in step.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NSQ 81
#define NUM_PT 14          /* piece types 1..14 in rsshogi order */
#define NUM_HAND 7         /* hand piece kinds in dlshogi order: P L N S G B R */
#define HAND_PLANES 28     /* 8 + 4 + 4 + 4 + 4 + 2 + 2 */
#define NUM_LABELS 2187
#define LUT_SIZE 65536

/* Plane offsets (see docs/observations.md). */
#define P_OWN_PIECES 0
#define P_OPP_PIECES 14
#define P_OWN_ATTACKS 28
#define P_OPP_ATTACKS 42
#define P_OWN_COUNT 56
#define P_OPP_COUNT 59
#define P_OWN_HAND 62
#define P_OPP_HAND 90
#define P_CHECK 118
#define NUM_PLANES 119

/* rsshogi PieceType values. */
enum { PAWN = 1, LANCE, KNIGHT, SILVER, BISHOP, ROOK, GOLD, KING,
       PRO_PAWN, PRO_LANCE, PRO_KNIGHT, PRO_SILVER, HORSE, DRAGON };

static const int HAND_MAX[NUM_HAND] = {8, 4, 4, 4, 4, 2, 2};
static const int HAND_OFFSET[NUM_HAND] = {0, 8, 12, 16, 20, 24, 26};

/* Movement of a piece that moves "up" (towards rank index 0): (dx, dy) pairs. */
typedef struct {
    int nsteps;
    int steps[8][2];
    int nslides;
    int slides[4][2];
} Movement;

#define ORTHO {0, -1}, {0, 1}, {-1, 0}, {1, 0}
#define DIAG {-1, -1}, {1, -1}, {-1, 1}, {1, 1}
#define GOLD_STEPS {-1, -1}, {0, -1}, {1, -1}, {-1, 0}, {1, 0}, {0, 1}

static const Movement MOVES[NUM_PT + 1] = {
    [PAWN] = {1, {{0, -1}}, 0, {{0}}},
    [LANCE] = {0, {{0}}, 1, {{0, -1}}},
    [KNIGHT] = {2, {{-1, -2}, {1, -2}}, 0, {{0}}},
    [SILVER] = {5, {{-1, -1}, {0, -1}, {1, -1}, {-1, 1}, {1, 1}}, 0, {{0}}},
    [BISHOP] = {0, {{0}}, 4, {DIAG}},
    [ROOK] = {0, {{0}}, 4, {ORTHO}},
    [GOLD] = {6, {GOLD_STEPS}, 0, {{0}}},
    [KING] = {8, {ORTHO, DIAG}, 0, {{0}}},
    [PRO_PAWN] = {6, {GOLD_STEPS}, 0, {{0}}},
    [PRO_LANCE] = {6, {GOLD_STEPS}, 0, {{0}}},
    [PRO_KNIGHT] = {6, {GOLD_STEPS}, 0, {{0}}},
    [PRO_SILVER] = {6, {GOLD_STEPS}, 0, {{0}}},
    [HORSE] = {4, {ORTHO}, 4, {DIAG}},
    [DRAGON] = {4, {DIAG}, 4, {ORTHO}},
};

static int piece_letter(char c) {
    switch (c) {
    case 'P': return PAWN;
    case 'L': return LANCE;
    case 'N': return KNIGHT;
    case 'S': return SILVER;
    case 'B': return BISHOP;
    case 'R': return ROOK;
    case 'G': return GOLD;
    case 'K': return KING;
    default: return 0;
    }
}

static int hand_index(int piece_type) {
    switch (piece_type) {
    case PAWN: return 0;
    case LANCE: return 1;
    case KNIGHT: return 2;
    case SILVER: return 3;
    case GOLD: return 4;
    case BISHOP: return 5;
    case ROOK: return 6;
    default: return -1;
    }
}

typedef struct {
    int8_t board[NSQ]; /* +type for Black, -type for White, 0 empty */
    int hands[2][NUM_HAND];
    int turn;          /* 0 Black, 1 White */
} Position;

/* Parse the board, side and hands fields of an SFEN. Returns 0 or -1 (exception set). */
static int parse_sfen(const char *s, Py_ssize_t n, Position *pos) {
    Py_ssize_t i = 0;
    int rank = 0, file = 8;
    memset(pos, 0, sizeof(*pos));
    while (i < n && s[i] == ' ') i++;
    for (; i < n && s[i] != ' '; i++) {
        char c = s[i];
        if (c == '/') {
            if (file != -1) goto bad;
            rank++;
            file = 8;
            if (rank > 8) goto bad;
        } else if (c >= '1' && c <= '9') {
            file -= c - '0';
            if (file < -1) goto bad;
        } else {
            int promoted = 0;
            if (c == '+') {
                promoted = 1;
                if (++i >= n) goto bad;
                c = s[i];
            }
            int white = (c >= 'a' && c <= 'z');
            int pt = piece_letter(white ? (char)(c - 'a' + 'A') : c);
            if (pt == 0 || file < 0) goto bad;
            if (promoted) {
                if (pt == GOLD || pt == KING) goto bad;
                pt = (pt == BISHOP) ? HORSE : (pt == ROOK) ? DRAGON : pt + 8;
            }
            pos->board[file * 9 + rank] = (int8_t)(white ? -pt : pt);
            file--;
        }
    }
    if (rank != 8 || file != -1) goto bad;
    while (i < n && s[i] == ' ') i++;
    if (i >= n || (s[i] != 'b' && s[i] != 'w')) goto bad;
    pos->turn = (s[i] == 'w');
    i++;
    while (i < n && s[i] == ' ') i++;
    if (i >= n) goto bad;
    if (s[i] == '-') return 0;
    int count = 0;
    for (; i < n && s[i] != ' '; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            count = count * 10 + (c - '0');
            continue;
        }
        int white = (c >= 'a' && c <= 'z');
        int h = hand_index(piece_letter(white ? (char)(c - 'a' + 'A') : c));
        if (h < 0) goto bad;
        pos->hands[white][h] += count ? count : 1;
        count = 0;
    }
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "keisei._native: cannot parse SFEN %.*s", (int)n, s);
    return -1;
}

/* Attack planes of one side. `pieces` holds piece types on squares (0 = none) in
 * the side-to-move frame, `occupied` marks every piece, `dir` is -1 for pieces
 * that move towards rank 0 (own) and +1 for the opponent's. */
static void add_attacks(const int8_t *pieces, const uint8_t *occupied, int dir,
                        uint8_t *type_planes /* 14 x 81 */, uint8_t *counts /* 81 */) {
    for (int sq = 0; sq < NSQ; sq++) {
        int pt = pieces[sq];
        if (!pt) continue;
        const Movement *m = &MOVES[pt];
        uint8_t *plane = type_planes + (pt - 1) * NSQ;
        int x = sq / 9, y = sq % 9;
        for (int k = 0; k < m->nsteps; k++) {
            int tx = x + m->steps[k][0];
            int ty = y + (dir < 0 ? m->steps[k][1] : -m->steps[k][1]);
            if (tx < 0 || tx > 8 || ty < 0 || ty > 8) continue;
            int t = tx * 9 + ty;
            plane[t] = 1;
            counts[t]++;
        }
        for (int k = 0; k < m->nslides; k++) {
            int dx = m->slides[k][0];
            int dy = dir < 0 ? m->slides[k][1] : -m->slides[k][1];
            int tx = x + dx, ty = y + dy;
            while (tx >= 0 && tx <= 8 && ty >= 0 && ty <= 8) {
                int t = tx * 9 + ty;
                plane[t] = 1;
                counts[t]++;
                if (occupied[t]) break;
                tx += dx;
                ty += dy;
            }
        }
    }
}

/* Write the NUM_PLANES x 81 planes of one position. */
static void encode_position(const Position *pos, uint8_t *out) {
    int8_t own[NSQ], opp[NSQ];
    uint8_t occupied[NSQ];
    uint8_t own_count[NSQ], opp_count[NSQ];
    int own_king = -1;
    int me = pos->turn;

    /* Board planes are sparse: clear them; hand and check planes are written whole below. */
    memset(out, 0, (size_t)P_OWN_HAND * NSQ);
    memset(own_count, 0, sizeof own_count);
    memset(opp_count, 0, sizeof opp_count);
    for (int sq = 0; sq < NSQ; sq++) {
        int v = pos->board[me ? 80 - sq : sq];
        int mine = me ? v < 0 : v > 0;
        int pt = v < 0 ? -v : v;
        own[sq] = (int8_t)(v && mine ? pt : 0);
        opp[sq] = (int8_t)(v && !mine ? pt : 0);
        occupied[sq] = v != 0;
        if (own[sq]) out[(P_OWN_PIECES + pt - 1) * NSQ + sq] = 1;
        if (opp[sq]) out[(P_OPP_PIECES + pt - 1) * NSQ + sq] = 1;
        if (own[sq] == KING) own_king = sq;
    }
    add_attacks(own, occupied, -1, out + P_OWN_ATTACKS * NSQ, own_count);
    add_attacks(opp, occupied, +1, out + P_OPP_ATTACKS * NSQ, opp_count);
    for (int sq = 0; sq < NSQ; sq++) {
        for (int k = 0; k < 3; k++) {
            if (own_count[sq] > k) out[(P_OWN_COUNT + k) * NSQ + sq] = 1;
            if (opp_count[sq] > k) out[(P_OPP_COUNT + k) * NSQ + sq] = 1;
        }
    }
    for (int side = 0; side < 2; side++) {
        const int *hand = pos->hands[side == 0 ? me : 1 - me];
        int base = side == 0 ? P_OWN_HAND : P_OPP_HAND;
        for (int h = 0; h < NUM_HAND; h++) {
            for (int k = 0; k < HAND_MAX[h]; k++)
                memset(out + (base + HAND_OFFSET[h] + k) * NSQ, hand[h] > k, NSQ);
        }
    }
    memset(out + P_CHECK * NSQ, own_king >= 0 && opp_count[own_king] > 0, NSQ);
}

static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *name, int writable) {
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s buffer holds %zd bytes, %zd needed", name, view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(encode_planes_doc,
"encode_planes(sfens, obs, turns)\n\n"
"Write the planes of each SFEN in `sfens` into `obs` (uint8, N x 119 x 81,\n"
"C-contiguous) and the side to move (0 Black, 1 White) into `turns` (uint8, N).");

static PyObject *encode_planes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode_planes(sfens, obs, turns) takes 3 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "sfens must be a sequence of str");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer obs, turns;
    if (get_buffer(args[1], &obs, n * NUM_PLANES * NSQ, "obs", 1) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    if (get_buffer(args[2], &turns, n, "turns", 1) < 0) {
        PyBuffer_Release(&obs);
        Py_DECREF(seq);
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint8_t *out = (uint8_t *)obs.buf;
    uint8_t *turn_out = (uint8_t *)turns.buf;
    int ok = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(items[i], &len);
        Position pos;
        if (!s || parse_sfen(s, len, &pos) < 0) {
            ok = 0;
            break;
        }
        encode_position(&pos, out + i * NUM_PLANES * NSQ);
        turn_out[i] = (uint8_t)pos.turn;
    }
    PyBuffer_Release(&turns);
    PyBuffer_Release(&obs);
    Py_DECREF(seq);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(fill_masks_doc,
"fill_masks(move_lists, turns, table, mask, index)\n\n"
"For env i, mark the label of every move in move_lists[i] in mask[i] (uint8,\n"
"N x 2187) and store the move's position in its list in index[i] (int16,\n"
"N x 2187). Labels come from `table` (int16, 2 x 65536: side to move x the\n"
"move's 16-bit value), built from rsshogi.policy.move_label.");

static PyObject *fill_masks(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fill_masks(move_lists, turns, table, mask, index) takes 5 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "move_lists must be a sequence of lists");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer turns, table, mask, index;
    int got = 0;
    if (get_buffer(args[1], &turns, n, "turns", 0) < 0) goto fail;
    got = 1;
    if (get_buffer(args[2], &table, 2 * LUT_SIZE * 2, "table", 0) < 0) goto fail;
    got = 2;
    if (get_buffer(args[3], &mask, n * NUM_LABELS, "mask", 1) < 0) goto fail;
    got = 3;
    if (get_buffer(args[4], &index, n * NUM_LABELS * 2, "index", 1) < 0) goto fail;
    got = 4;

    const uint8_t *turn = (const uint8_t *)turns.buf;
    const int16_t *lut = (const int16_t *)table.buf;
    PyObject **lists = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t *mrow = (uint8_t *)mask.buf + i * NUM_LABELS;
        int16_t *irow = (int16_t *)index.buf + i * NUM_LABELS;
        const int16_t *labels = lut + (turn[i] ? LUT_SIZE : 0);
        memset(mrow, 0, NUM_LABELS);
        PyObject *moves = lists[i];
        if (!PyList_Check(moves)) {
            PyErr_Format(PyExc_TypeError, "move_lists[%zd] is not a list", i);
            goto fail;
        }
        Py_ssize_t m = PyList_GET_SIZE(moves);
        for (Py_ssize_t k = 0; k < m; k++) {
            PyObject *as_int = PyNumber_Long(PyList_GET_ITEM(moves, k));
            if (!as_int) goto fail;
            long v = PyLong_AsLong(as_int);
            Py_DECREF(as_int);
            if (v == -1 && PyErr_Occurred()) goto fail;
            int label = labels[v & 0xffff];
            if (label < 0 || mrow[label]) {
                PyErr_Format(PyExc_RuntimeError,
                             "env %zd: move value %ld has %s label %d", i, v,
                             label < 0 ? "no" : "a duplicate", label);
                goto fail;
            }
            mrow[label] = 1;
            irow[label] = (int16_t)k;
        }
    }
    PyBuffer_Release(&index);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&table);
    PyBuffer_Release(&turns);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    if (got >= 4) PyBuffer_Release(&index);
    if (got >= 3) PyBuffer_Release(&mask);
    if (got >= 2) PyBuffer_Release(&table);
    if (got >= 1) PyBuffer_Release(&turns);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode_planes", (PyCFunction)(void (*)(void))encode_planes, METH_FASTCALL, encode_planes_doc},
    {"fill_masks", (PyCFunction)(void (*)(void))fill_masks, METH_FASTCALL, fill_masks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "keisei.shogi._native",
    "Batch encoding of observations and legal masks (see keisei.shogi.features).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "NUM_PLANES", NUM_PLANES) < 0 ||
        PyModule_AddIntConstant(m, "NUM_LABELS", NUM_LABELS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
