/*
 * keisei.shogi._native: the hot path of observation and legal-mask encoding.
 *
 * rsshogi owns the rules of a Game (legality of what is played, repetition, the end of a game).
 * This module turns what rsshogi hands out -- packed SFENs (or SFEN strings) and lists of legal
 * Move objects -- into the fixed arrays a network consumes, for a whole batch in one call, so
 * that the per-step Python work of the vectorised environment stays small. For the environment
 * it also finds the legal moves itself, in the positions it keeps, under rsshogi's rules (the
 * "legal moves" section; the tests compare them with rsshogi's): making rsshogi's lists, a Python
 * object per move, was the largest cost of a step.
 *
 * Where the time goes (measured, docs/environment.md): the environment's positions change
 * every step, so mispredicted branches and calls into rsshogi cost more than arithmetic.
 * Hence packed SFENs decoded by table, attacks as bitboards computed once per position for
 * planes, legal moves and mate planes alike, Move values read in place (set_move_layout), and,
 * for the environment, positions kept here and moved along by the moves played (apply_moves)
 * instead of being read from rsshogi every step.
 *
 * Frame: everything is written from the side to move's point of view. For White
 * the board is rotated 180 degrees (square s becomes 80 - s) and the hands are
 * swapped, so "own" pieces always move towards rank index 0. Square index
 * s = file_index * 9 + rank_index (file_index 0 is file 1, rank_index 0 is rank a),
 * the same numbering as rsshogi's Square.value and the dlshogi move labels.
 *
 * The plane layout is documented in docs/observations.md and mirrored by
 * keisei/shogi/features.py (PLANE_NAMES); keep the three in step.
 *
 * Two planes are not in the frame: white_to_move says which colour the side to move is (the
 * declaration rule is not symmetric), and repeated_ge1/ge2 say how often the position occurred
 * before in its game. The repetitions need the game's history, which only rsshogi's Board
 * has: wherever a Game is at hand they are its `_repeats` (Game.repetitions, read from the
 * board's is_repetition after every move, the counter that adjudicates sennichite), and 0 for
 * bare SFENs and packed positions.
 *
 * The three mate planes (mate_in_one_to/from, opp_mate_in_one_to) need the rules of check and
 * checkmate: the plane encoders write them 0, and mate_planes / mate_planes_boards (the
 * "mate in one" section) set them by trying only the moves that give check.
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
#define P_MATE 62          /* mate_in_one_to, mate_in_one_from, opp_mate_in_one_to: written 0 here */
#define P_OWN_HAND 65
#define P_OPP_HAND 93
#define P_CHECK 121
#define P_WHITE 122        /* white_to_move */
#define P_REPEATED 123     /* repeated_ge1, repeated_ge2 */
#define NUM_PLANES 125

/* rsshogi PieceType values. */
enum { PAWN = 1, LANCE, KNIGHT, SILVER, BISHOP, ROOK, GOLD, KING,
       PRO_PAWN, PRO_LANCE, PRO_KNIGHT, PRO_SILVER, HORSE, DRAGON };

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

/* A position as the encoder sees it (96 bytes: the environment keeps one per game, see
 * apply_moves). */
typedef struct {
    int8_t board[NSQ];           /* +type for Black, -type for White, 0 empty */
    uint8_t hands[2][NUM_HAND];  /* pieces in hand, hand order P L N S G B R */
    uint8_t turn;                /* 0 Black, 1 White */
} Position;
#define POSITION_SIZE ((Py_ssize_t)sizeof(Position))

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
    pos->turn = (uint8_t)(s[i] == 'w');
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
        int total = pos->hands[white][h] + (count ? count : 1);
        pos->hands[white][h] = (uint8_t)(total < 255 ? total : 255);
        count = 0;
    }
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "keisei._native: cannot parse SFEN %.*s", (int)n, s);
    return -1;
}

/* rsshogi's packed SFEN (YaneuraOu's 256-bit format), read LSB first: 1 bit side to
 * move, 7 + 7 bits the two kings' squares, then every other square 0..80 as a Huffman
 * code (0 empty; 1 + the prefix below, a promotion bit for all but gold, a colour bit),
 * then pieces in hand and "in the box" (not on the board, e.g. handicap games) until bit
 * 256: the prefix below, a flag bit (0 in hand, 1 in the box) for all but gold, a colour
 * bit. A gold in the box is written as a flagged White silver. Prefixes, first bit first:
 * P 0, L 100, N 101, S 110, G 1110, B 11110, R 11111. The decoder is strict: the whole
 * 256 bits and exactly the 38 non-king pieces of a set, or a ValueError.
 *
 * Both kinds of code are decoded by table (the next 8 or 7 bits give the whole code), and
 * the board loop has no data-dependent branch: the encoder's cost is mostly mispredicted
 * branches on positions that change every step, not arithmetic. */
static const int INVENTORY[NUM_HAND] = {18, 4, 4, 4, 4, 2, 2}; /* P L N S G B R */
#define NO_KIND NUM_HAND /* the inventory slot of an empty square */

/* Piece type of a prefix at the start of `w` (LSB first) and its length in bits. */
static int read_prefix(uint64_t w, int *len) {
    if (!(w & 1)) { *len = 1; return PAWN; }
    if (!(w & 2)) { *len = 3; return (w & 4) ? KNIGHT : LANCE; }
    if (!(w & 4)) { *len = 3; return SILVER; }
    if (!(w & 8)) { *len = 4; return GOLD; }
    *len = 5;
    return (w & 16) ? ROOK : BISHOP;
}

/* A board square's code by its next 8 bits: the signed piece, its kind (hand order) for
 * the inventory, the length. A suffix code by its next 7 bits: kind, owner (0 Black, 1
 * White, 2 the box), length (0: no such code). */
typedef struct {
    int8_t piece;
    uint8_t kind;
    uint8_t len;
} BoardCode;
typedef struct {
    uint8_t kind;
    uint8_t owner;
    uint8_t len;
} SuffixCode;
static BoardCode BOARD_CODES[256];
static SuffixCode SUFFIX_CODES[128];

static void init_codes(void) {
    for (int b = 0; b < 256; b++) {
        BoardCode *code = &BOARD_CODES[b];
        if (!(b & 1)) {
            code->piece = 0;
            code->kind = NO_KIND;
            code->len = 1;
            continue;
        }
        int len, pt = read_prefix((uint64_t)b >> 1, &len);
        int base = pt, at = 1 + len;
        if (pt != GOLD) {
            if ((b >> at) & 1) pt = (pt == BISHOP) ? HORSE : (pt == ROOK) ? DRAGON : pt + 8;
            at++;
        }
        code->piece = (int8_t)(((b >> at) & 1) ? -pt : pt);
        code->kind = (uint8_t)hand_index(base);
        code->len = (uint8_t)(at + 1);
    }
    for (int b = 0; b < 128; b++) {
        SuffixCode *code = &SUFFIX_CODES[b];
        int len, pt = read_prefix((uint64_t)b, &len);
        int boxed = 0;
        if (pt != GOLD) boxed = (b >> len++) & 1;
        int white = (b >> len++) & 1;
        code->len = (uint8_t)len;
        code->owner = (uint8_t)(boxed ? 2 : white);
        if (boxed && white) { /* the box's gold, or no code at all */
            code->len = pt == SILVER ? (uint8_t)len : 0;
            pt = GOLD;
        }
        code->kind = (uint8_t)hand_index(pt);
    }
}

/* 8 bytes, the first byte lowest. */
static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static int decode_packed(const uint8_t *data, Position *pos) {
    uint8_t buf[96]; /* the board loop may run past bit 256 on a corrupt input: checked after */
    int counts[NUM_HAND + 1] = {0};
    int hands[3][NUM_HAND] = {{0}};
    memcpy(buf, data, 32);
    memset(buf + 32, 0, sizeof buf - 32);
#define WINDOW(c) (load64(buf + ((c) >> 3)) >> ((c) & 7))
    uint64_t w = WINDOW(0);
    int cur = 15;
    int black_king = (int)((w >> 1) & 0x7f), white_king = (int)((w >> 8) & 0x7f);
    pos->turn = (uint8_t)(w & 1);
    if (black_king >= NSQ || white_king >= NSQ || black_king == white_king) goto bad;
    for (int sq = 0; sq < NSQ; sq++) {
        const BoardCode *code = &BOARD_CODES[WINDOW(cur) & 0xff];
        int king = (sq == black_king) | (sq == white_king);
        pos->board[sq] = king ? (sq == black_king ? KING : -KING) : code->piece;
        counts[king ? NO_KIND : code->kind]++;
        cur += king ? 0 : code->len;
    }
    if (cur > 256) goto bad;
    while (cur < 256) {
        const SuffixCode *code = &SUFFIX_CODES[WINDOW(cur) & 0x7f];
        if (!code->len) goto bad;
        cur += code->len;
        counts[code->kind]++;
        hands[code->owner][code->kind]++;
    }
#undef WINDOW
    if (cur != 256) goto bad;
    for (int h = 0; h < NUM_HAND; h++)
        if (counts[h] != INVENTORY[h]) goto bad;
    for (int c = 0; c < 2; c++)
        for (int h = 0; h < NUM_HAND; h++) pos->hands[c][h] = (uint8_t)hands[c][h];
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "keisei._native: not a packed SFEN of a full piece set");
    return -1;
}

/* Bitboards: bit s is square s (81 of 128 bits). Tables built once from MOVES (init_tables):
 * STEP_BB[colour][type][sq], the squares a piece attacks by its one-square (and knight)
 * moves, Black moving towards rank 0 and White away from it; RAY[d][sq], the squares from sq
 * in direction d (one of the eight DIRS) to the edge; RAY_END[d][sq], the last of them (127
 * for none); slides of a piece type as directions. Sliding attacks stop at the first
 * occupied square, found with one bit scan: the ray's occupied squares plus its last
 * square, the lowest (directions of increasing index) or the highest. Everything is
 * computed in Black's frame and rotated for White when written out. */
typedef unsigned __int128 BB;
static const int DIRS[8][2] = {{0, -1}, {0, 1}, {-1, 0}, {1, 0}, {-1, -1}, {1, -1}, {-1, 1}, {1, 1}};
static BB STEP_BB[2][NUM_PT + 1][NSQ];
static BB RAY[8][128];
static uint8_t RAY_END[8][NSQ];
static uint8_t SLIDE_N[2][NUM_PT + 1], SLIDE_DIRS[2][NUM_PT + 1][4];
static uint8_t EXPAND[256][8], EXPAND_REV[256][8]; /* bit j -> byte j, bit j -> byte 7 - j */

static int dir_index(int dx, int dy) {
    for (int d = 0; d < 8; d++)
        if (DIRS[d][0] == dx && DIRS[d][1] == dy) return d;
    return -1;
}

static inline int on_board(int x, int y) { return x >= 0 && x <= 8 && y >= 0 && y <= 8; }

static int init_tables(void) {
    for (int d = 0; d < 8; d++) {
        for (int sq = 0; sq < NSQ; sq++) {
            int x = sq / 9 + DIRS[d][0], y = sq % 9 + DIRS[d][1], last = 127;
            for (; on_board(x, y); x += DIRS[d][0], y += DIRS[d][1]) {
                last = x * 9 + y;
                RAY[d][sq] |= (BB)1 << last;
            }
            RAY_END[d][sq] = (uint8_t)last;
        }
    }
    for (int colour = 0; colour < 2; colour++) {
        int flip = colour ? -1 : 1;
        for (int pt = 1; pt <= NUM_PT; pt++) {
            const Movement *m = &MOVES[pt];
            for (int sq = 0; sq < NSQ; sq++) {
                for (int k = 0; k < m->nsteps; k++) {
                    int x = sq / 9 + m->steps[k][0], y = sq % 9 + flip * m->steps[k][1];
                    if (on_board(x, y)) STEP_BB[colour][pt][sq] |= (BB)1 << (x * 9 + y);
                }
            }
            SLIDE_N[colour][pt] = (uint8_t)m->nslides;
            for (int k = 0; k < m->nslides; k++) {
                int d = dir_index(m->slides[k][0], flip * m->slides[k][1]);
                if (d < 0) return -1;
                SLIDE_DIRS[colour][pt][k] = (uint8_t)d;
            }
        }
    }
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < 8; j++) {
            EXPAND[b][j] = (uint8_t)((b >> j) & 1);
            EXPAND_REV[b][j] = (uint8_t)((b >> (7 - j)) & 1);
        }
    return 0;
}

static inline int lowest_bit(BB b) {
    uint64_t lo = (uint64_t)b;
    return lo ? __builtin_ctzll(lo) : 64 + __builtin_ctzll((uint64_t)(b >> 64));
}

static inline int highest_bit(BB b) {
    uint64_t hi = (uint64_t)(b >> 64);
    return hi ? 127 - __builtin_clzll(hi) : 63 - __builtin_clzll((uint64_t)b);
}

/* The squares attacked along direction d from sq, up to and including the first occupied one. */
static inline BB slide(int d, int sq, BB occupied) {
    BB ray = RAY[d][sq];
    BB stops = (ray & occupied) | (BB)1 << RAY_END[d][sq];
    int first = (d & 1) ? lowest_bit(stops) : highest_bit(stops); /* odd d: the index increases */
    return ray & ~RAY[d][first];
}

/* A bitboard as a plane of 81 bytes, in Black's frame or rotated 180 degrees (White's):
 * eight bits at a time through a table (bytes of the bitboard: little-endian memory). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "keisei._native reads bitboards as little-endian bytes"
#endif
static inline void expand(BB b, uint8_t *out, int rotate) {
    uint8_t bytes[16];
    if (!rotate) {
        memcpy(bytes, &b, sizeof bytes);
        for (int k = 0; k < 10; k++) memcpy(out + 8 * k, EXPAND[bytes[k]], 8);
        out[80] = bytes[10] & 1;
    } else { /* out[s] = bit 80 - s: out[8k + j] = bit 7 - j of byte 9 - k of (b >> 1) */
        BB shifted = b >> 1;
        memcpy(bytes, &shifted, sizeof bytes);
        for (int k = 0; k < 10; k++) memcpy(out + 8 * k, EXPAND_REV[bytes[9 - k]], 8);
        out[80] = (uint8_t)(b & 1);
    }
}

/* --- the analysed position -------------------------------------------------------------
 * What every encoder below works from: the board and hands, bitboards of the occupied squares,
 * of each colour and of each colour and type, the kings, and each piece's attacks with that
 * occupancy, computed once per position for the planes, the legal moves and the mate planes.
 * The searches for legal moves and mates play moves on it with scratch_put/scratch_take, which
 * keep the bitboards up to date but not `attacks` and `covered`, and restore it before they
 * return: those two hold for the position as scratch_init found it. */
typedef struct {
    int8_t board[NSQ];
    uint8_t hands[2][NUM_HAND];
    BB occupied, by_colour[2], by_type[2][NUM_PT + 1];
    int king[2];           /* -1 without a king */
    int count;             /* pieces on the board */
    uint8_t squares[NSQ];  /* their squares, in increasing order */
    BB attacks[NSQ];       /* by square: the attacks of the piece there (as scratch_init found it) */
    BB covered[2];         /* by colour: the union of its pieces' attacks (as scratch_init found it) */
} Scratch;

static BB SQUARE_BB[128]; /* 1 << sq: a load, where a 128-bit shift by a variable branches */
static inline BB square_bb(int sq) { return SQUARE_BB[sq]; }

static inline BB piece_attacks(int c, int pt, int sq, BB occupied) {
    BB a = STEP_BB[c][pt][sq];
    for (int k = 0; k < SLIDE_N[c][pt]; k++) a |= slide(SLIDE_DIRS[c][pt][k], sq, occupied);
    return a;
}

static void scratch_put(Scratch *s, int sq, int v) {
    int c = v < 0, pt = c ? -v : v;
    BB b = square_bb(sq);
    s->board[sq] = (int8_t)v;
    s->occupied |= b;
    s->by_colour[c] |= b;
    s->by_type[c][pt] |= b;
    if (pt == KING) s->king[c] = sq;
}

static int scratch_take(Scratch *s, int sq) {
    int v = s->board[sq], c = v < 0, pt = c ? -v : v;
    BB keep = ~square_bb(sq);
    s->board[sq] = 0;
    s->occupied &= keep;
    s->by_colour[c] &= keep;
    s->by_type[c][pt] &= keep;
    return v;
}

static void scratch_init(Scratch *s, const Position *pos) {
    int n = 0;
    memset(s->by_type, 0, sizeof s->by_type);
    memcpy(s->board, pos->board, sizeof s->board);
    memcpy(s->hands, pos->hands, sizeof s->hands);
    for (int sq = 0; sq < NSQ; sq++) { /* the occupied squares, without a branch per square */
        s->squares[n] = (uint8_t)sq;
        n += pos->board[sq] != 0;
    }
    s->count = n;
    for (int j = 0; j < n; j++) {
        int sq = s->squares[j], v = pos->board[sq], c = v < 0;
        s->by_type[c][c ? -v : v] |= square_bb(sq);
    }
    for (int c = 0; c < 2; c++) { /* after the loop: no chain of updates through memory in it */
        BB colour = 0;
        for (int pt = 1; pt <= NUM_PT; pt++) colour |= s->by_type[c][pt];
        s->by_colour[c] = colour;
        s->king[c] = s->by_type[c][KING] ? lowest_bit(s->by_type[c][KING]) : -1;
    }
    s->occupied = s->by_colour[0] | s->by_colour[1];
    s->covered[0] = s->covered[1] = 0;
    for (int j = 0; j < n; j++) {
        int sq = s->squares[j], v = pos->board[sq], c = v < 0;
        s->attacks[sq] = piece_attacks(c, c ? -v : v, sq, s->occupied);
        s->covered[c] |= s->attacks[sq];
    }
}

/* The hand planes of one side, written 0 before: for each kind, as many planes of ones as pieces
 * in hand (up to HAND_MAX), the rest left 0. The planes of a kind are contiguous. */
static const int HAND_MAX[NUM_HAND] = {8, 4, 4, 4, 4, 2, 2};

static void hand_planes(uint8_t *out, const uint8_t *hand) {
    for (int h = 0; h < NUM_HAND; h++) {
        int planes = hand[h] < HAND_MAX[h] ? hand[h] : HAND_MAX[h];
        if (planes) memset(out + HAND_OFFSET[h] * NSQ, 1, (size_t)planes * NSQ);
    }
}

/* Write the NUM_PLANES x 81 planes of the analysed position s, side to move `me` (9.9 KB, every
 * byte written once or twice); `repeats` is how often it occurred before in its game
 * (game_repeats; 0 unknown). Per colour and piece type: the pieces and the OR of their attacks, and over the
 * colour's pieces the "attacked at least 1, 2, 3 times" sets by carry-save addition. The mate
 * planes are written 0 (scratch_mate_planes sets them). */
static void encode_scratch(const Scratch *s, int me, int repeats, uint8_t *out) {
    for (int side = 0; side < 2; side++) {
        int colour = side ? 1 - me : me;
        uint8_t *pieces = out + (side ? P_OPP_PIECES : P_OWN_PIECES) * NSQ;
        uint8_t *attacks = out + (side ? P_OPP_ATTACKS : P_OWN_ATTACKS) * NSQ;
        BB ge1 = 0, ge2 = 0, ge3 = 0;
        memset(pieces, 0, NUM_PT * NSQ);
        for (int pt = 1; pt <= NUM_PT; pt++) {
            BB of_type = 0;
            for (BB b = s->by_type[colour][pt]; b; b &= b - 1) {
                int sq = lowest_bit(b);
                BB a = s->attacks[sq];
                pieces[(pt - 1) * NSQ + (me ? 80 - sq : sq)] = 1;
                of_type |= a;
                ge3 |= ge2 & a;
                ge2 |= ge1 & a;
                ge1 |= a;
            }
            expand(of_type, attacks + (pt - 1) * NSQ, me);
        }
        uint8_t *counts = out + (side ? P_OPP_COUNT : P_OWN_COUNT) * NSQ;
        expand(ge1, counts, me);
        expand(ge2, counts + NSQ, me);
        expand(ge3, counts + 2 * NSQ, me);
    }
    memset(out + P_MATE * NSQ, 0, (P_OPP_HAND + HAND_PLANES - P_MATE) * NSQ); /* mate and hand planes */
    hand_planes(out + P_OWN_HAND * NSQ, s->hands[me]);
    hand_planes(out + P_OPP_HAND * NSQ, s->hands[1 - me]);
    int king = s->king[me];
    memset(out + P_CHECK * NSQ, king >= 0 && (int)((s->covered[1 - me] >> king) & 1), NSQ);
    memset(out + P_WHITE * NSQ, me, NSQ);
    memset(out + P_REPEATED * NSQ, repeats >= 1, NSQ);
    memset(out + (P_REPEATED + 1) * NSQ, repeats >= 2, NSQ);
}

/* The planes of `pos` (encode_scratch). */
static void encode_position(const Position *pos, int repeats, uint8_t *out) {
    Scratch s;
    scratch_init(&s, pos);
    encode_scratch(&s, pos->turn, repeats, out);
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
"Write the planes of each SFEN in `sfens` into `obs` (uint8, N x NUM_PLANES x 81,\n"
"C-contiguous) and the side to move (0 Black, 1 White) into `turns` (uint8, N). An SFEN\n"
"has no history: the repetition planes are 0.");

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
        encode_position(&pos, 0, out + i * NUM_PLANES * NSQ);
        turn_out[i] = (uint8_t)pos.turn;
    }
    PyBuffer_Release(&turns);
    PyBuffer_Release(&obs);
    Py_DECREF(seq);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* --- legal masks ----------------------------------------------------------------
 * A legal move is an rsshogi Move object whose 16-bit value (from, to, promotion or
 * drop) picks its label in `table`. Asking each object for its value (nb_int) costs a
 * Python call and an integer per move; instead `set_move_layout` finds, once, where the
 * value sits inside a Move object (probing Moves of known values) and the masks read it
 * there. A different type, or no probe done, takes the slow path: the same labels. */
static PyTypeObject *move_type = NULL;
static Py_ssize_t move_offset = -1;
static PyObject *move_class = NULL; /* the probes' type, for Moves made here (cached_move) */

static inline int move_value(PyObject *move, long *value) {
    if (Py_TYPE(move) == move_type) {
        uint16_t v;
        memcpy(&v, (const char *)move + move_offset, sizeof v);
        *value = v;
        return 0;
    }
    PyObject *as_int = PyNumber_Long(move);
    if (!as_int) return -1;
    *value = PyLong_AsLong(as_int);
    Py_DECREF(as_int);
    return (*value == -1 && PyErr_Occurred()) ? -1 : 0;
}

PyDoc_STRVAR(set_move_layout_doc,
"set_move_layout(probes) -> int\n\n"
"Find the byte offset of the 16-bit move value inside the objects of `probes` (Moves of\n"
"one type with distinct, known values, read with int()); the masks then read values there\n"
"for objects of exactly that type. Returns the offset, or -1 (slow path kept) when no\n"
"single offset fits every probe. The probes' type is kept as the one pick_tracked makes\n"
"Moves of.");

static PyObject *set_move_layout(PyObject *self, PyObject *probes) {
    (void)self;
    PyObject *seq = PySequence_Fast(probes, "probes must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    long values[64];
    if (n < 3 || n > 64) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "set_move_layout needs 3 to 64 probes");
        return NULL;
    }
    PyTypeObject *type = Py_TYPE(items[0]);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *as_int = Py_TYPE(items[k]) == type ? PyNumber_Long(items[k]) : NULL;
        if (!as_int) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "probes must share one type");
            return NULL;
        }
        values[k] = PyLong_AsLong(as_int);
        Py_DECREF(as_int);
        if (values[k] < 0 || values[k] > 0xffff) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "probe values must fit 16 bits");
            return NULL;
        }
    }
    Py_ssize_t found = -1, matches = 0;
    for (Py_ssize_t off = (Py_ssize_t)sizeof(PyObject); off + 2 <= type->tp_basicsize; off++) {
        int all = 1;
        for (Py_ssize_t k = 0; k < n && all; k++) {
            uint16_t v;
            memcpy(&v, (const char *)items[k] + off, sizeof v);
            all = v == (uint16_t)values[k];
        }
        if (all) {
            found = off;
            matches++;
        }
    }
    Py_DECREF(seq);
    Py_INCREF(type);
    Py_XSETREF(move_class, (PyObject *)type);
    if (matches == 1 && type->tp_itemsize == 0) {
        Py_XINCREF(type);
        Py_XSETREF(move_type, type);
        move_offset = found;
    } else {
        Py_CLEAR(move_type);
        move_offset = -1;
    }
    return PyLong_FromSsize_t(move_offset);
}

/* Mark the labels of `moves` (a list of Moves) in `mrow` and their list positions in `irow`. */
static int fill_mask_row(Py_ssize_t env, PyObject *moves, int turn, const int16_t *lut, uint8_t *mrow,
                         int16_t *irow) {
    const int16_t *labels = lut + (turn ? LUT_SIZE : 0);
    memset(mrow, 0, NUM_LABELS);
    if (!PyList_Check(moves)) {
        PyErr_Format(PyExc_TypeError, "the legal moves of env %zd are not a list", env);
        return -1;
    }
    Py_ssize_t m = PyList_GET_SIZE(moves);
    PyObject **items = ((PyListObject *)moves)->ob_item;
    for (Py_ssize_t k = 0; k < m; k++) {
        long v;
        if (move_value(items[k], &v) < 0) return -1;
        int label = labels[v & 0xffff];
        if (label < 0 || mrow[label]) {
            PyErr_Format(PyExc_RuntimeError, "env %zd: move value %ld has %s label %d", env, v,
                         label < 0 ? "no" : "a duplicate", label);
            return -1;
        }
        mrow[label] = 1;
        if (irow) irow[label] = (int16_t)k;
    }
    return 0;
}

PyDoc_STRVAR(pick_moves_doc,
"pick_moves(move_lists, turns, table, actions) -> list\n\n"
"For env i, the Move of move_lists[i] whose label (side to move turns[i]) is actions[i]\n"
"(int64, N): a scan of the list, the inverse of fill_masks without its index table.\n"
"ValueError naming the env when no move has that label.");

static PyObject *pick_moves(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pick_moves(move_lists, turns, table, actions) takes 4 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "move_lists must be a sequence of lists");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *picked = NULL;
    Py_buffer turns, table, actions;
    int got = 0;
    if (get_buffer(args[1], &turns, n, "turns", 0) < 0) goto done;
    got = 1;
    if (get_buffer(args[2], &table, 2 * LUT_SIZE * 2, "table", 0) < 0) goto done;
    got = 2;
    if (get_buffer(args[3], &actions, n * (Py_ssize_t)sizeof(int64_t), "actions", 0) < 0) goto done;
    got = 3;
    if (actions.itemsize != sizeof(int64_t)) {
        PyErr_SetString(PyExc_TypeError, "actions must be int64");
        goto done;
    }
    picked = PyList_New(n);
    if (!picked) goto done;
    PyObject **lists = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        const int16_t *labels = (const int16_t *)table.buf + (((const uint8_t *)turns.buf)[i] ? LUT_SIZE : 0);
        int64_t want = ((const int64_t *)actions.buf)[i];
        PyObject *moves = lists[i];
        if (!PyList_Check(moves)) {
            PyErr_Format(PyExc_TypeError, "the legal moves of env %zd are not a list", i);
            goto fail;
        }
        PyObject **items = ((PyListObject *)moves)->ob_item;
        Py_ssize_t m = PyList_GET_SIZE(moves), k = 0;
        for (; k < m; k++) {
            long v;
            if (move_value(items[k], &v) < 0) goto fail;
            if (labels[v & 0xffff] == want) break;
        }
        if (k == m) {
            PyErr_Format(PyExc_ValueError, "env %zd: action %lld is not a legal move", i, (long long)want);
            goto fail;
        }
        Py_INCREF(items[k]);
        PyList_SET_ITEM(picked, i, items[k]);
    }
    goto done;
fail:
    Py_CLEAR(picked);
done:
    if (got >= 3) PyBuffer_Release(&actions);
    if (got >= 2) PyBuffer_Release(&table);
    if (got >= 1) PyBuffer_Release(&turns);
    Py_DECREF(seq);
    return picked;
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
    int got = 0, ok = 0;
    if (get_buffer(args[1], &turns, n, "turns", 0) < 0) goto done;
    got = 1;
    if (get_buffer(args[2], &table, 2 * LUT_SIZE * 2, "table", 0) < 0) goto done;
    got = 2;
    if (get_buffer(args[3], &mask, n * NUM_LABELS, "mask", 1) < 0) goto done;
    got = 3;
    if (get_buffer(args[4], &index, n * NUM_LABELS * 2, "index", 1) < 0) goto done;
    got = 4;
    PyObject **lists = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (fill_mask_row(i, lists[i], ((const uint8_t *)turns.buf)[i], (const int16_t *)table.buf,
                          (uint8_t *)mask.buf + i * NUM_LABELS, (int16_t *)index.buf + i * NUM_LABELS) < 0)
            goto done;
    }
    ok = 1;
done:
    if (got >= 4) PyBuffer_Release(&index);
    if (got >= 3) PyBuffer_Release(&mask);
    if (got >= 2) PyBuffer_Release(&table);
    if (got >= 1) PyBuffer_Release(&turns);
    Py_DECREF(seq);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* --- packed SFENs ----------------------------------------------------------------- */
static PyObject *str_board = NULL, *str_legal_moves = NULL, *str_to_packed_sfen = NULL, *str_repeats = NULL;

/* How often the current position of `game` (a keisei Game) occurred before in its game, capped at
 * 2 for the repeated_ge1/ge2 planes: its `_repeats` (Game.repetitions, which Game keeps from rsshogi's
 * is_repetition after every move). -1 with an exception set. */
static int game_repeats(PyObject *game) {
    PyObject *count = PyObject_GetAttr(game, str_repeats);
    if (!count) return -1;
    long repeats = PyLong_AsLong(count);
    Py_DECREF(count);
    if (repeats == -1 && PyErr_Occurred()) return -1;
    return repeats < 2 ? (int)repeats : 2;
}

/* The 32 bytes of a packed SFEN (a bytes object) into `pos`. */
static int decode_packed_object(PyObject *packed, Position *pos) {
    if (!PyBytes_Check(packed) || PyBytes_GET_SIZE(packed) != 32) {
        PyErr_SetString(PyExc_TypeError, "a packed SFEN must be 32 bytes");
        return -1;
    }
    return decode_packed((const uint8_t *)PyBytes_AS_STRING(packed), pos);
}

PyDoc_STRVAR(encode_packed_doc,
"encode_packed(packed, obs, turns)\n\n"
"Like encode_planes, from rsshogi packed SFENs (32-byte bytes, Board.to_packed_sfen()).");

static PyObject *encode_packed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode_packed(packed, obs, turns) takes 3 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "packed must be a sequence of bytes");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer obs, turns;
    int got = 0, ok = 0;
    if (get_buffer(args[1], &obs, n * NUM_PLANES * NSQ, "obs", 1) < 0) goto done;
    got = 1;
    if (get_buffer(args[2], &turns, n, "turns", 1) < 0) goto done;
    got = 2;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        Position pos;
        if (decode_packed_object(items[i], &pos) < 0) goto done;
        encode_position(&pos, 0, (uint8_t *)obs.buf + i * NUM_PLANES * NSQ);
        ((uint8_t *)turns.buf)[i] = (uint8_t)pos.turn;
    }
    ok = 1;
done:
    if (got >= 2) PyBuffer_Release(&turns);
    if (got >= 1) PyBuffer_Release(&obs);
    Py_DECREF(seq);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(encode_games_doc,
"encode_games(games, table, obs, turns, mask, index) -> list\n\n"
"The whole encoding of a batch of keisei Games in one call: for game i, the planes of\n"
"game._board (via its packed SFEN; the repetition planes from game._repeats) into obs[i],\n"
"its side to move into turns[i], and the labels of game.legal_moves into mask[i] and index[i]\n"
"(as fill_masks; index may be None).\n"
"Returns the list of the games' legal-move lists (index[i] points into the i-th).");

static PyObject *encode_games(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "encode_games(games, table, obs, turns, mask, index) takes 6 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "games must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer table, obs, turns, mask, index;
    int got = 0, ok = 0;
    PyObject *legals = PyList_New(n);
    if (!legals) {
        Py_DECREF(seq);
        return NULL;
    }
    if (get_buffer(args[1], &table, 2 * LUT_SIZE * 2, "table", 0) < 0) goto done;
    got = 1;
    if (get_buffer(args[2], &obs, n * NUM_PLANES * NSQ, "obs", 1) < 0) goto done;
    got = 2;
    if (get_buffer(args[3], &turns, n, "turns", 1) < 0) goto done;
    got = 3;
    if (get_buffer(args[4], &mask, n * NUM_LABELS, "mask", 1) < 0) goto done;
    got = 4;
    if (args[5] != Py_None) {
        if (get_buffer(args[5], &index, n * NUM_LABELS * 2, "index", 1) < 0) goto done;
        got = 5;
    }
    PyObject **games = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        Position pos;
        int repeats = game_repeats(games[i]);
        PyObject *board = repeats < 0 ? NULL : PyObject_GetAttr(games[i], str_board);
        if (!board) goto done;
        PyObject *packed = PyObject_CallMethodNoArgs(board, str_to_packed_sfen);
        Py_DECREF(board);
        if (!packed) goto done;
        int bad = decode_packed_object(packed, &pos);
        Py_DECREF(packed);
        if (bad) goto done;
        encode_position(&pos, repeats, (uint8_t *)obs.buf + i * NUM_PLANES * NSQ);
        ((uint8_t *)turns.buf)[i] = (uint8_t)pos.turn;
        PyObject *legal = PyObject_GetAttr(games[i], str_legal_moves);
        if (!legal) goto done;
        PyList_SET_ITEM(legals, i, legal); /* the list owns it now */
        if (fill_mask_row(i, legal, pos.turn, (const int16_t *)table.buf, (uint8_t *)mask.buf + i * NUM_LABELS,
                          got >= 5 ? (int16_t *)index.buf + i * NUM_LABELS : NULL) < 0)
            goto done;
    }
    ok = 1;
done:
    if (got >= 5) PyBuffer_Release(&index);
    if (got >= 4) PyBuffer_Release(&mask);
    if (got >= 3) PyBuffer_Release(&turns);
    if (got >= 2) PyBuffer_Release(&obs);
    if (got >= 1) PyBuffer_Release(&table);
    Py_DECREF(seq);
    if (!ok) {
        Py_DECREF(legals);
        return NULL;
    }
    return legals;
}


/* --- tracked positions -------------------------------------------------------------
 * The environment keeps the decoded position of each game (96 bytes) and, after each
 * step, applies the move just played to it instead of asking rsshogi for a packed SFEN
 * and decoding it again: moving a piece, taking a capture into hand (unpromoted),
 * promoting, dropping, and passing the turn. This is bookkeeping of where pieces stand,
 * not rules: the moves are legal ones (legal_moves_of, below), and a game that starts
 * anew is read from rsshogi again (reload_positions). */

static inline int base_type(int pt) {
    return pt == HORSE ? BISHOP : pt == DRAGON ? ROOK : pt > KING ? pt - 8 : pt;
}

static inline int promoted_type(int pt) {
    return pt == BISHOP ? HORSE : pt == ROOK ? DRAGON : pt + 8;
}

static Position *get_positions(PyObject *obj, Py_buffer *view, Py_ssize_t n) {
    if (get_buffer(obj, view, n * POSITION_SIZE, "positions", 1) < 0) return NULL;
    return (Position *)view->buf;
}

PyDoc_STRVAR(apply_moves_doc,
"apply_moves(positions, moves)\n\n"
"Play moves[i] (a legal rsshogi Move of that position) on positions[i] (uint8, N x 96).");

static PyObject *apply_moves(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_moves(positions, moves) takes 2 arguments");
        return NULL;
    }
    PyObject *moves = PySequence_Fast(args[1], "moves must be a sequence");
    if (!moves) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(moves);
    Py_buffer view;
    Position *positions = get_positions(args[0], &view, n);
    if (!positions) {
        Py_DECREF(moves);
        return NULL;
    }
    int ok = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        long v;
        if (move_value(PySequence_Fast_GET_ITEM(moves, i), &v) < 0) {
            ok = 0;
            break;
        }
        Position *pos = &positions[i];
        int me = pos->turn, sign = me ? -1 : 1;
        int to = (int)(v & 0x7f), from = (int)((v >> 7) & 0x7f);
        if (v & (1 << 14)) { /* a drop: `from` is the piece type */
            int h = hand_index(from);
            if (h < 0 || to >= NSQ || pos->board[to] || !pos->hands[me][h]) goto bad;
            pos->board[to] = (int8_t)(sign * from);
            pos->hands[me][h]--;
        } else {
            if (from >= NSQ || to >= NSQ) goto bad;
            int piece = pos->board[from], taken = pos->board[to];
            if (piece * sign <= 0 || taken * sign > 0) goto bad;
            if (taken) {
                int h = hand_index(base_type(taken < 0 ? -taken : taken));
                if (h < 0) goto bad; /* a king */
                pos->hands[me][h]++;
            }
            if (v & (1 << 15)) piece = sign * promoted_type(piece * sign);
            pos->board[to] = (int8_t)piece;
            pos->board[from] = 0;
        }
        pos->turn = (uint8_t)(1 - me);
        continue;
    bad:
        PyErr_Format(PyExc_ValueError, "env %zd: move value %ld does not fit the tracked position", i, v);
        ok = 0;
        break;
    }
    PyBuffer_Release(&view);
    Py_DECREF(moves);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(reload_positions_doc,
"reload_positions(games, rows, positions)\n\n"
"Read games[k]'s position from rsshogi (its packed SFEN) into positions[rows[k]].");

static PyObject *reload_positions(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "reload_positions(games, rows, positions) takes 3 arguments");
        return NULL;
    }
    PyObject *games = PySequence_Fast(args[0], "games must be a sequence");
    if (!games) return NULL;
    PyObject *rows = PySequence_Fast(args[1], "rows must be a sequence");
    if (!rows) {
        Py_DECREF(games);
        return NULL;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(games);
    Py_buffer view;
    Position *positions = NULL;
    int ok = 0;
    if (PySequence_Fast_GET_SIZE(rows) != k) {
        PyErr_SetString(PyExc_ValueError, "games and rows differ in length");
        goto done;
    }
    if (PyObject_GetBuffer(args[2], &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    positions = (Position *)view.buf;
    Py_ssize_t n = view.len / POSITION_SIZE;
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(rows, j));
        if (i == -1 && PyErr_Occurred()) goto release;
        if (i < 0 || i >= n) {
            PyErr_Format(PyExc_IndexError, "row %zd is outside the %zd positions", i, n);
            goto release;
        }
        PyObject *board = PyObject_GetAttr(PySequence_Fast_GET_ITEM(games, j), str_board);
        if (!board) goto release;
        PyObject *packed = PyObject_CallMethodNoArgs(board, str_to_packed_sfen);
        Py_DECREF(board);
        if (!packed) goto release;
        int bad = decode_packed_object(packed, &positions[i]);
        Py_DECREF(packed);
        if (bad) goto release;
    }
    ok = 1;
release:
    PyBuffer_Release(&view);
done:
    Py_DECREF(rows);
    Py_DECREF(games);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(encode_rows_doc,
"encode_rows(positions, rows, obs[, games])\n\n"
"The planes of positions[rows[k]] (uint8, N x 96) into obs[k]; the repetition planes from\n"
"games[k] (the Game at that position), or 0 without games.");

static PyObject *encode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode_rows(positions, rows, obs[, games]) takes 3 or 4 arguments");
        return NULL;
    }
    PyObject *rows = PySequence_Fast(args[1], "rows must be a sequence");
    if (!rows) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(rows);
    PyObject *games = NULL;
    Py_buffer positions, obs;
    int got = 0, ok = 0;
    if (nargs == 4 && args[3] != Py_None) {
        if (!(games = PySequence_Fast(args[3], "games must be a sequence"))) goto done;
        if (PySequence_Fast_GET_SIZE(games) != k) {
            PyErr_SetString(PyExc_ValueError, "games and rows differ in length");
            goto done;
        }
    }
    if (PyObject_GetBuffer(args[0], &positions, PyBUF_C_CONTIGUOUS) < 0) goto done;
    got = 1;
    if (get_buffer(args[2], &obs, k * NUM_PLANES * NSQ, "obs", 1) < 0) goto done;
    got = 2;
    Py_ssize_t n = positions.len / POSITION_SIZE;
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(rows, j));
        if (i == -1 && PyErr_Occurred()) goto done;
        if (i < 0 || i >= n) {
            PyErr_Format(PyExc_IndexError, "row %zd is outside the %zd positions", i, n);
            goto done;
        }
        int repeats = games ? game_repeats(PySequence_Fast_GET_ITEM(games, j)) : 0;
        if (repeats < 0) goto done;
        encode_position((const Position *)positions.buf + i, repeats, (uint8_t *)obs.buf + j * NUM_PLANES * NSQ);
    }
    ok = 1;
done:
    if (got >= 2) PyBuffer_Release(&obs);
    if (got >= 1) PyBuffer_Release(&positions);
    Py_XDECREF(games);
    Py_DECREF(rows);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* --- mate in one --------------------------------------------------------------------
 * The three mate planes: the to- and from-squares of every legal move of the side to move
 * that checkmates at once, and the to-squares of the opponent's such moves were the side to
 * move to pass (none while it is in check). The rules are rsshogi's: a checkmate is a check
 * with no legal reply; a pawn drop that mates is illegal (so no pawn drop is ever marked);
 * no piece may stand where it can never move again; no two unpromoted pawns of a side on
 * one file. Only the moves that give check are tried, found from the king's side: where
 * each piece type would attack the king (its rays up to the first piece with the current
 * occupancy: exact, as the king is not in check before the move), and the pieces that
 * stand between the king and a slider of their own side (a discovered check when they
 * leave that ray); pinned pieces stay on their ray. Each check is played on a scratch
 * position, and the checked side looks for a legal reply: a king move to a square not
 * attacked (the king's own square is seen through), a capture of the only checker, or a
 * move or drop between it and the king (not a pawn drop that mates the other side). */

static const int HAND_TYPE[NUM_HAND] = {PAWN, LANCE, KNIGHT, SILVER, GOLD, BISHOP, ROOK};
static BB ZONE[2], FILE_BB[9], DEAD[2][NUM_PT + 1]; /* promotion zone; files; squares a piece never leaves */
static int8_t LINE_DIR[NSQ][NSQ];                   /* the direction from one square to another, or -1 */
static BB NEAR[2][NSQ]; /* from where a step (or knight's jump) of colour c reaches a step check on a king on sq */

static void init_mate_tables(void) {
    memset(LINE_DIR, -1, sizeof LINE_DIR);
    for (int sq = 0; sq < NSQ; sq++) {
        int rank = sq % 9;
        FILE_BB[sq / 9] |= (BB)1 << sq;
        ZONE[0] |= (BB)(rank <= 2) << sq;
        ZONE[1] |= (BB)(rank >= 6) << sq;
        DEAD[0][PAWN] |= (BB)(rank == 0) << sq;
        DEAD[0][KNIGHT] |= (BB)(rank <= 1) << sq;
        DEAD[1][PAWN] |= (BB)(rank == 8) << sq;
        DEAD[1][KNIGHT] |= (BB)(rank >= 7) << sq;
        for (int d = 0; d < 8; d++)
            for (BB ray = RAY[d][sq]; ray; ray &= ray - 1) LINE_DIR[sq][lowest_bit(ray)] = (int8_t)d;
    }
    DEAD[0][LANCE] = DEAD[0][PAWN];
    DEAD[1][LANCE] = DEAD[1][PAWN];
    for (int c = 0; c < 2; c++) /* a step piece checks from a king's neighbour or knight square */
        for (int k = 0; k < NSQ; k++) {
            BB checks = STEP_BB[c][KING][k] | STEP_BB[1 - c][KNIGHT][k];
            for (int f = 0; f < NSQ; f++)
                if ((STEP_BB[c][KING][f] | STEP_BB[c][KNIGHT][f]) & checks) NEAR[c][k] |= (BB)1 << f;
        }
}

/* The first occupied square from sq in direction d (as a bitboard; 0 for none). */
static inline BB first_on_ray(int d, int sq, BB occupied) {
    BB stops = RAY[d][sq] & occupied;
    if (!stops) return 0;
    return square_bb((d & 1) ? lowest_bit(stops) : highest_bit(stops));
}

/* The pieces of colour c that attack sq. */
static BB attackers(const Scratch *s, int sq, int c) {
    const BB *t = s->by_type[c];
    int o = 1 - c;
    BB golds = t[GOLD] | t[PRO_PAWN] | t[PRO_LANCE] | t[PRO_KNIGHT] | t[PRO_SILVER];
    BB found = (STEP_BB[o][PAWN][sq] & t[PAWN]) | (STEP_BB[o][KNIGHT][sq] & t[KNIGHT]) |
               (STEP_BB[o][SILVER][sq] & t[SILVER]) | (STEP_BB[o][GOLD][sq] & golds) |
               (STEP_BB[o][KING][sq] & (t[KING] | t[HORSE] | t[DRAGON]));
    BB rooks = t[ROOK] | t[DRAGON], bishops = t[BISHOP] | t[HORSE];
    int behind = c ? 0 : 1; /* the ray from sq on which a lance of colour c attacking sq stands */
    for (int d = 0; d < 4; d++) {
        BB line = rooks | (d == behind ? t[LANCE] : 0);
        if (RAY[d][sq] & line) found |= first_on_ray(d, sq, s->occupied) & line;
    }
    for (int d = 4; d < 8; d++)
        if (RAY[d][sq] & bishops) found |= first_on_ray(d, sq, s->occupied) & bishops;
    return found;
}

static int attacked_through(const Scratch *s, int sq, int c, BB occupied);

/* Whether a piece of colour c attacks sq (attackers(...) != 0, stopping at the first found). */
static int attacked(const Scratch *s, int sq, int c) { return attacked_through(s, sq, c, s->occupied); }

/* As attacked, the sliders' rays stopping at the squares of `occupied`. */
static int attacked_through(const Scratch *s, int sq, int c, BB occupied) {
    const BB *t = s->by_type[c];
    int o = 1 - c;
    BB near = (STEP_BB[o][PAWN][sq] & t[PAWN]) | (STEP_BB[o][KNIGHT][sq] & t[KNIGHT]) |
              (STEP_BB[o][SILVER][sq] & t[SILVER]) |
              (STEP_BB[o][GOLD][sq] & (t[GOLD] | t[PRO_PAWN] | t[PRO_LANCE] | t[PRO_KNIGHT] | t[PRO_SILVER])) |
              (STEP_BB[o][KING][sq] & (t[KING] | t[HORSE] | t[DRAGON]));
    if (near) return 1;
    BB rooks = t[ROOK] | t[DRAGON], bishops = t[BISHOP] | t[HORSE];
    int behind = c ? 0 : 1;
    for (int d = 0; d < 8; d++) {
        BB line = d < 4 ? rooks | (d == behind ? t[LANCE] : 0) : bishops;
        if (RAY[d][sq] & line && first_on_ray(d, sq, occupied) & line) return 1;
    }
    return 0;
}

static int has_evasion(Scratch *s, int side);
static BB line_blockers(const Scratch *s, int k, int mine, int theirs);

/* Whether `side` may drop a piece of type pt on the empty square sq, which blocks a check: not
 * on a dead square, no second pawn on the file, and not a pawn drop that mates. */
static int may_block_by_drop(Scratch *s, int side, int pt, int sq) {
    if (DEAD[side][pt] & square_bb(sq)) return 0;
    if (pt != PAWN) return 1;
    if (s->by_type[side][PAWN] & FILE_BB[sq / 9]) return 0;
    int other = 1 - side;
    if (s->king[other] < 0 || !(STEP_BB[side][PAWN][sq] & square_bb(s->king[other]))) return 1;
    scratch_put(s, sq, side ? -PAWN : PAWN);
    int legal = has_evasion(s, other);
    scratch_take(s, sq);
    return legal;
}

/* Whether the king of `side` escapes by a move to a square the other side does not attack (the
 * king's own square seen through; a piece it would take does not guard its own square). */
static int king_escapes(const Scratch *s, int side) {
    int k = s->king[side], other = 1 - side;
    BB occupied = s->occupied & ~square_bb(k);
    for (BB to = STEP_BB[side][KING][k] & ~s->by_colour[side]; to; to &= to - 1)
        if (!attacked_through(s, lowest_bit(to), other, occupied)) return 1;
    return 0;
}

/* Whether a piece of `side` other than the king can move to sq, taking the only checker or
 * stepping between it and the king: any that is not pinned (`pinned`: by line_blockers). A pinned
 * piece would leave its ray, and could not stay on it: the rays from the king meet only there. */
static int piece_blocks(const Scratch *s, int side, int sq, BB pinned) {
    return (attackers(s, sq, side) & ~square_bb(s->king[side]) & ~pinned) != 0;
}

/* Whether `side`, in check, has a legal move. */
static int has_evasion(Scratch *s, int side) {
    int k = s->king[side];
    if (king_escapes(s, side)) return 1;
    BB checkers = attackers(s, k, 1 - side);
    if (checkers & (checkers - 1)) return 0; /* a double check: only the king may move */
    int checker = lowest_bit(checkers), d = LINE_DIR[k][checker];
    BB between = d < 0 ? 0 : RAY[d][k] & ~RAY[d][checker] & ~checkers;
    BB pinned = line_blockers(s, k, side, 1 - side);
    if (piece_blocks(s, side, checker, pinned)) return 1;
    for (; between; between &= between - 1) {
        int sq = lowest_bit(between);
        if (piece_blocks(s, side, sq, pinned)) return 1;
        for (int h = 0; h < NUM_HAND; h++)
            if (s->hands[side][h] && may_block_by_drop(s, side, HAND_TYPE[h], sq)) return 1;
    }
    return 0;
}

/* The pieces of colour `mine` that stand first on a ray from the square k with a slider of colour
 * `theirs` right behind them that moves along the ray towards k: pinned pieces (k a king of
 * `mine`) or pieces whose move off the ray gives a discovered check (k the other king). */
static BB line_blockers(const Scratch *s, int k, int mine, int theirs) {
    const BB *t = s->by_type[theirs];
    BB rooks = t[ROOK] | t[DRAGON], bishops = t[BISHOP] | t[HORSE], found = 0;
    int lance_dir = theirs ? 0 : 1; /* the ray from k on which a lance of `theirs` moves towards k */
    for (int d = 0; d < 8; d++) {
        BB sliders = d < 4 ? rooks | (d == lance_dir ? t[LANCE] : 0) : bishops;
        if (!(RAY[d][k] & sliders)) continue;
        BB first = first_on_ray(d, k, s->occupied);
        if (first & s->by_colour[mine] && first_on_ray(d, lowest_bit(first), s->occupied) & sliders)
            found |= first;
    }
    return found;
}

/* What the mover (colour c) needs to know to find its checks. */
typedef struct {
    BB check[NUM_PT + 1]; /* per piece type: the squares where it would give check */
    BB discover;          /* the pieces that give a discovered check by leaving their ray */
    BB pinned;            /* the mover's pinned pieces */
    int in_check;         /* the mover is in check */
    int own_known;        /* pinned and in_check are set (at the first candidate move) */
} CheckInfo;

static void check_info(const Scratch *s, int c, CheckInfo *info) {
    int k = s->king[1 - c], o = 1 - c;
    BB reach[8];
    for (int d = 0; d < 8; d++) reach[d] = slide(d, k, s->occupied);
    BB rook = reach[0] | reach[1] | reach[2] | reach[3], bishop = reach[4] | reach[5] | reach[6] | reach[7];
    BB gold = STEP_BB[o][GOLD][k], *check = info->check;
    check[PAWN] = STEP_BB[o][PAWN][k];
    check[LANCE] = reach[c ? 0 : 1]; /* the ray from k on which a lance of colour c attacks it */
    check[KNIGHT] = STEP_BB[o][KNIGHT][k];
    check[SILVER] = STEP_BB[o][SILVER][k];
    check[BISHOP] = bishop;
    check[ROOK] = rook;
    check[GOLD] = check[PRO_PAWN] = check[PRO_LANCE] = check[PRO_KNIGHT] = check[PRO_SILVER] = gold;
    check[KING] = 0;
    check[HORSE] = bishop | STEP_BB[o][HORSE][k];
    check[DRAGON] = rook | STEP_BB[o][DRAGON][k];
    info->discover = line_blockers(s, k, c, c);
    info->own_known = 0;
}

/* Sets info's pinned and in_check for the mover (colour c), once (s as scratch_init left it). */
static void own_king_info(const Scratch *s, int c, CheckInfo *info) {
    int own = s->king[c];
    if (info->own_known) return;
    info->own_known = 1;
    info->pinned = own < 0 ? 0 : line_blockers(s, own, c, 1 - c);
    info->in_check = own >= 0 && (int)(s->covered[1 - c] >> own & 1);
}

/* Whether the move of colour c from `from` (-1: a drop) to `to`, placing piece v, which gives
 * check, is legal and mates. `exposes`: the move may leave the mover's king in check (it is in
 * check, or the king moves); a pinned piece's move off its ray is never tried. */
static int mates(Scratch *s, int c, int from, int to, int v, int exposes) {
    int other = 1 - c, taken = s->board[to], piece = from >= 0 ? scratch_take(s, from) : 0, result = 0;
    if (taken) scratch_take(s, to);
    scratch_put(s, to, v);
    if (!exposes || !attacked(s, s->king[c], other)) result = !has_evasion(s, other);
    scratch_take(s, to);
    if (taken) scratch_put(s, to, taken);
    if (from >= 0) scratch_put(s, from, piece);
    return result;
}

/* The squares of the ray from the square k through `sq` (which is on one). */
static inline BB ray_through(int k, int sq) { return RAY[LINE_DIR[k][sq]][k]; }

/* The mating moves of the piece of colour c on `from` into *to_out / *from_out. */
static void piece_mates(Scratch *s, int c, int from, CheckInfo *info, BB *to_out, BB *from_out) {
    int v = s->board[from], pt = v < 0 ? -v : v, sign = c ? -1 : 1, other_king = s->king[1 - c];
    int can_promote = pt <= ROOK, promoted = can_promote ? promoted_type(pt) : pt;
    BB moves = s->attacks[from] & ~s->by_colour[c] & ~square_bb(other_king);
    BB discovered = info->discover >> from & 1 ? moves & ~ray_through(other_king, from) : 0;
    BB targets = (moves & (info->check[pt] | info->check[promoted])) | discovered;
    if (!targets) return;
    own_king_info(s, c, info);
    if (info->pinned >> from & 1) targets &= ray_through(s->king[c], from);
    int exposes = info->in_check || pt == KING;
    for (; targets; targets &= targets - 1) {
        int to = lowest_bit(targets);
        BB here = square_bb(to);
        int promotes = can_promote && ((ZONE[c] & (here | square_bb(from))) != 0);
        int found = !(DEAD[c][pt] & here) && ((discovered | info->check[pt]) & here) &&
                    mates(s, c, from, to, v, exposes);
        if (!found && promotes && ((discovered | info->check[promoted]) & here))
            found = mates(s, c, from, to, sign * promoted, exposes);
        if (found) {
            *to_out |= here;
            *from_out |= square_bb(from);
        }
    }
}

/* The to- and from-squares of every legal move of colour c that checkmates at once. A pawn drop
 * never does (that would be illegal). */
static void mating_moves(Scratch *s, int c, BB *to_out, BB *from_out) {
    CheckInfo info;
    *to_out = *from_out = 0;
    if (s->king[1 - c] < 0) return;
    check_info(s, c, &info);
    const BB *t = s->by_type[c];
    BB sliders = t[LANCE] | t[BISHOP] | t[ROOK] | t[HORSE] | t[DRAGON];
    BB pieces = s->by_colour[c] & (NEAR[c][s->king[1 - c]] | sliders | info.discover); /* the others cannot check */
    for (; pieces; pieces &= pieces - 1) piece_mates(s, c, lowest_bit(pieces), &info, to_out, from_out);
    for (int h = 1; h < NUM_HAND; h++) {
        if (!s->hands[c][h]) continue;
        int pt = HAND_TYPE[h];
        BB to = info.check[pt] & ~s->occupied & ~DEAD[c][pt];
        if (to) own_king_info(s, c, &info);
        for (; to; to &= to - 1) {
            int sq = lowest_bit(to);
            if (mates(s, c, -1, sq, c ? -pt : pt, info.in_check)) *to_out |= square_bb(sq);
        }
    }
}

/* The three mate planes of the position in s, side to move `me`, into out (81 bytes each, in the
 * side to move's frame); `in_check`: whether `me` is in check. */
static void scratch_mate_planes(Scratch *s, int me, int in_check, uint8_t *out) {
    BB to, from, threat = 0, unused;
    mating_moves(s, me, &to, &from);
    if (!in_check) mating_moves(s, 1 - me, &threat, &unused);
    expand(to, out, me);
    expand(from, out + NSQ, me);
    expand(threat, out + 2 * NSQ, me);
}

/* The three mate planes of `pos` into out. */
static void mate_planes_of(const Position *pos, uint8_t *out) {
    Scratch s;
    int me = pos->turn;
    scratch_init(&s, pos);
    scratch_mate_planes(&s, me, s.king[me] >= 0 && (int)(s.covered[1 - me] >> s.king[me] & 1), out);
}

PyDoc_STRVAR(mate_planes_doc,
"mate_planes(positions, obs[, rows])\n\n"
"The three mate planes (mate_in_one_to, mate_in_one_from, opp_mate_in_one_to) of the\n"
"positions (uint8, N x 96, as apply_moves keeps them) into obs (uint8, K x NUM_PLANES x 81;\n"
"the other planes are left as they are): of positions[k] into obs[k], or with `rows`, of\n"
"positions[rows[k]] into obs[k].");

static PyObject *mate_planes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "mate_planes(positions, obs[, rows]) takes 2 or 3 arguments");
        return NULL;
    }
    PyObject *rows = NULL;
    Py_buffer positions, obs;
    int got = 0, ok = 0;
    if (PyObject_GetBuffer(args[0], &positions, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    got = 1;
    if (PyObject_GetBuffer(args[1], &obs, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    got = 2;
    Py_ssize_t n = positions.len / POSITION_SIZE, k = obs.len / (NUM_PLANES * NSQ);
    if (nargs == 3 && args[2] != Py_None) {
        if (!(rows = PySequence_Fast(args[2], "rows must be a sequence"))) goto done;
        if (PySequence_Fast_GET_SIZE(rows) > k) {
            PyErr_Format(PyExc_ValueError, "%zd rows, obs holds %zd", PySequence_Fast_GET_SIZE(rows), k);
            goto done;
        }
        k = PySequence_Fast_GET_SIZE(rows);
    } else if (k > n) {
        PyErr_Format(PyExc_ValueError, "obs holds %zd positions, positions only %zd", k, n);
        goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i = j;
        if (rows) {
            i = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(rows, j));
            if (i == -1 && PyErr_Occurred()) goto done;
            if (i < 0 || i >= n) {
                PyErr_Format(PyExc_IndexError, "row %zd is outside the %zd positions", i, n);
                goto done;
            }
        }
        mate_planes_of((const Position *)positions.buf + i, (uint8_t *)obs.buf + (j * NUM_PLANES + P_MATE) * NSQ);
    }
    ok = 1;
done:
    Py_XDECREF(rows);
    if (got >= 2) PyBuffer_Release(&obs);
    PyBuffer_Release(&positions);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(mate_planes_boards_doc,
"mate_planes_boards(boards, obs)\n\n"
"As mate_planes, of rsshogi Boards (read through their packed SFEN): boards[i] into obs[i].");

static PyObject *mate_planes_boards(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "mate_planes_boards(boards, obs) takes 2 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "boards must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer obs;
    int ok = 0;
    if (get_buffer(args[1], &obs, n * NUM_PLANES * NSQ, "obs", 1) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Position pos;
        PyObject *packed = PyObject_CallMethodNoArgs(PySequence_Fast_GET_ITEM(seq, i), str_to_packed_sfen);
        if (!packed) goto done;
        int bad = decode_packed_object(packed, &pos);
        Py_DECREF(packed);
        if (bad) goto done;
        mate_planes_of(&pos, (uint8_t *)obs.buf + (i * NUM_PLANES + P_MATE) * NSQ);
    }
    ok = 1;
done:
    PyBuffer_Release(&obs);
    Py_DECREF(seq);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* --- legal moves --------------------------------------------------------------------
 * The environment's legal masks come from here rather than from rsshogi's lists of Move
 * objects (making those lists, one Python object per move, was the largest cost of a step):
 * the legal moves of a kept position under rsshogi's rules, as its 16-bit move values (to in
 * bits 0-6, from or the dropped piece type in 7-13, drop 14, promotion 15). Every move of a
 * piece to a square it attacks that is not its own side's: the king's to squares the other
 * side does not attack (the king's own square seen through); while in check, the other
 * pieces only capture a single checker or step in between; a pinned piece stays on its ray;
 * a promotion wherever the move starts or ends in the far three ranks, and the move without
 * promotion unless the piece could never move again (pawn or lance on the last rank, knight on
 * the last two). Drops: on empty squares (between a single checker and the king while in
 * check), no piece where it could never move, no second unpromoted pawn on a file, and no pawn
 * drop that mates (has_evasion, as for the mate planes). tests/test_rules.py compares the
 * moves with rsshogi's Board.legal_moves() on random play and on the perft positions. */
#define MAX_LEGAL 600 /* above the 593 legal moves a shogi position can have */
#define DROP_FLAG 0x4000
#define PROMOTE_FLAG 0x8000
static BB BOARD_BB; /* the 81 squares */

/* The move values `base | to` for each square `to` of `squares`, appended at out[n] (a 64-bit
 * half at a time: cheaper than scanning the 128-bit bitboard). */
static inline int emit_moves(int base, BB squares, uint16_t *out, int n) {
    for (uint64_t lo = (uint64_t)squares; lo; lo &= lo - 1) out[n++] = (uint16_t)(base | __builtin_ctzll(lo));
    for (uint64_t hi = (uint64_t)(squares >> 64); hi; hi &= hi - 1)
        out[n++] = (uint16_t)(base | (64 + __builtin_ctzll(hi)));
    return n;
}

/* The king's moves of colour c to squares the other side does not attack, appended at out[n]:
 * the other side's attacks as scratch_init found them, but for the pieces that give check
 * (`checkers`) as if the king had left its square (a sliding checker attacks the square behind
 * it too). */
static int king_moves(const Scratch *s, int c, BB checkers, uint16_t *out, int n) {
    int k = s->king[c];
    if (k < 0) return n;
    BB danger = s->covered[1 - c], occupied = s->occupied & ~square_bb(k);
    for (; checkers; checkers &= checkers - 1) {
        int sq = lowest_bit(checkers), v = s->board[sq];
        danger |= piece_attacks(1 - c, v < 0 ? -v : v, sq, occupied);
    }
    return emit_moves(k << 7, STEP_BB[c][KING][k] & ~s->by_colour[c] & ~danger, out, n);
}

/* The moves of a piece of type pt and colour c from `from` to each square of `to`, with and
 * without promotion as allowed, appended at out[n]. */
static int piece_moves(int c, int pt, int from, BB to, uint16_t *out, int n) {
    BB promoting = pt <= ROOK ? (ZONE[c] & square_bb(from) ? to : to & ZONE[c]) : 0;
    n = emit_moves(from << 7, to & ~DEAD[c][pt], out, n);
    return emit_moves(from << 7 | PROMOTE_FLAG, promoting, out, n);
}

/* Where colour c may not drop a pawn among `to`: files with its unpromoted pawn, and the square
 * in front of the other king when a pawn there would mate. */
static BB no_pawn_drops(Scratch *s, int c, BB to) {
    BB banned = 0, pawns = s->by_type[c][PAWN];
    for (int f = 0; f < 9; f++)
        if (pawns & FILE_BB[f]) banned |= FILE_BB[f];
    int other = 1 - c, k = s->king[other];
    BB front = k < 0 ? 0 : STEP_BB[other][PAWN][k] & to & ~banned;
    if (front) {
        int sq = lowest_bit(front);
        scratch_put(s, sq, c ? -PAWN : PAWN);
        if (!has_evasion(s, other)) banned |= front;
        scratch_take(s, sq);
    }
    return banned;
}

/* The drops of colour c on the squares of `to` (empty), appended at out[n]. */
static int drop_moves(Scratch *s, int c, BB to, uint16_t *out, int n) {
    for (int h = 0; h < NUM_HAND; h++) {
        if (!s->hands[c][h]) continue;
        int pt = HAND_TYPE[h];
        BB squares = to & ~DEAD[c][pt];
        if (pt == PAWN) squares &= ~no_pawn_drops(s, c, squares);
        n = emit_moves(DROP_FLAG | pt << 7, squares, out, n);
    }
    return n;
}

/* The legal moves of colour c in s into out (at most MAX_LEGAL); returns their number and sets
 * *in_check. s is left as it was. */
static int legal_moves_of(Scratch *s, int c, uint16_t *out, int *in_check) {
    int other = 1 - c, k = s->king[c];
    BB checkers = k >= 0 && (s->covered[other] >> k & 1) ? attackers(s, k, other) : 0;
    int n = king_moves(s, c, checkers, out, 0);
    *in_check = checkers != 0;
    if (checkers & (checkers - 1)) return n; /* a double check: only the king may move */
    BB target = ~s->by_colour[c], empty = ~s->occupied & BOARD_BB;
    if (checkers) {
        int checker = lowest_bit(checkers), d = LINE_DIR[k][checker];
        empty = d < 0 ? 0 : RAY[d][k] & ~RAY[d][checker] & ~checkers;
        target = checkers | empty;
    }
    BB pinned = k < 0 ? 0 : line_blockers(s, k, c, other);
    BB pieces = s->by_colour[c] & ~s->by_type[c][KING];
    for (; pieces; pieces &= pieces - 1) {
        int from = lowest_bit(pieces), v = s->board[from], pt = v < 0 ? -v : v;
        BB to = s->attacks[from] & target;
        if (pinned >> from & 1) to &= ray_through(k, from);
        n = piece_moves(c, pt, from, to, out, n);
    }
    return drop_moves(s, c, empty, out, n);
}

/* The labels of moves[0..n) (side to move `turn`) into the mask row, each move as label << 16 | value
 * into entries, and its position there into the index row (if any). -1 with an exception on a
 * move without a label or two moves with one. */
static int mark_moves(Py_ssize_t env, const uint16_t *moves, int n, int turn, const int16_t *lut, uint8_t *mrow,
                      uint32_t *entries, int16_t *irow) {
    const int16_t *labels = lut + (turn ? LUT_SIZE : 0);
    memset(mrow, 0, NUM_LABELS);
    for (int k = 0; k < n; k++) {
        int label = labels[moves[k]];
        if (label < 0 || mrow[label]) {
            PyErr_Format(PyExc_RuntimeError, "env %zd: move value %d has %s label %d", env, moves[k],
                         label < 0 ? "no" : "a duplicate", label);
            return -1;
        }
        mrow[label] = 1;
        entries[k] = (uint32_t)label << 16 | moves[k];
        if (irow) irow[label] = (int16_t)k;
    }
    return 0;
}

/* Move objects by value, made once (of move_class) and shared: a Move is immutable. */
static PyObject *move_cache[LUT_SIZE];

static PyObject *cached_move(int v) {
    PyObject *move = move_cache[v];
    if (!move) {
        if (!move_class) {
            PyErr_SetString(PyExc_RuntimeError, "no Move type: call set_move_layout first");
            return NULL;
        }
        if (!(move = PyObject_CallFunction(move_class, "i", v))) return NULL;
        move_cache[v] = move; /* the cache's reference */
    }
    Py_INCREF(move);
    return move;
}

PyDoc_STRVAR(encode_tracked_doc,
"encode_tracked(positions, games, table, obs, turns, mask, index, moves, counts)\n\n"
"Everything the environment needs of the tracked positions[i] (uint8, N x 96) of games[i]:\n"
"the planes into obs[i] (the repetition planes from game i's _repeats, the mate planes\n"
"included), the side to move into turns[i], the legal moves (legal_moves_of) into moves[i]\n"
"(uint32, N x MAX_LEGAL: label << 16 | move value) and their number into counts[i] (int32),\n"
"their labels into mask[i] and their positions in moves[i] into index[i] (int16, N x 2187;\n"
"index may be None).");

/* One row of encode_tracked. */
static int encode_tracked_row(Py_ssize_t i, const Position *pos, int repeats, const int16_t *table, uint8_t *obs,
                              uint8_t *mask, int16_t *index, uint32_t *entries, int32_t *count) {
    Scratch s;
    uint16_t moves[MAX_LEGAL];
    int in_check;
    scratch_init(&s, pos);
    encode_scratch(&s, pos->turn, repeats, obs);
    *count = legal_moves_of(&s, pos->turn, moves, &in_check);
    scratch_mate_planes(&s, pos->turn, in_check, obs + P_MATE * NSQ);
    return mark_moves(i, moves, *count, pos->turn, table, mask, entries, index);
}

static PyObject *encode_tracked(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "encode_tracked(positions, games, table, obs, turns, mask, index, moves, "
                                         "counts) takes 9 arguments");
        return NULL;
    }
    PyObject *games = PySequence_Fast(args[1], "games must be a sequence");
    if (!games) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(games);
    /* the buffers: positions, table, obs, turns, mask, moves, counts, and index if given */
    static const char *names[8] = {"positions", "table", "obs", "turns", "mask", "moves", "counts", "index"};
    const int arg[8] = {0, 2, 3, 4, 5, 7, 8, 6}, writable[8] = {0, 0, 1, 1, 1, 1, 1, 1};
    const Py_ssize_t need[8] = {n * POSITION_SIZE, 2 * LUT_SIZE * 2, n * NUM_PLANES * NSQ, n, n * NUM_LABELS,
                                n * MAX_LEGAL * 4, n * 4, n * NUM_LABELS * 2};
    int wanted = args[6] == Py_None ? 7 : 8, got = 0, ok = 0;
    Py_buffer views[8];
    for (; got < wanted; got++)
        if (get_buffer(args[arg[got]], &views[got], need[got], names[got], writable[got]) < 0) goto done;
    const Position *pos = (const Position *)views[0].buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        int repeats = game_repeats(PySequence_Fast_GET_ITEM(games, i));
        if (repeats < 0) goto done;
        ((uint8_t *)views[3].buf)[i] = pos[i].turn;
        if (encode_tracked_row(i, &pos[i], repeats, (const int16_t *)views[1].buf,
                               (uint8_t *)views[2].buf + i * NUM_PLANES * NSQ, (uint8_t *)views[4].buf + i * NUM_LABELS,
                               wanted == 8 ? (int16_t *)views[7].buf + i * NUM_LABELS : NULL,
                               (uint32_t *)views[5].buf + i * MAX_LEGAL, (int32_t *)views[6].buf + i) < 0)
            goto done;
    }
    ok = 1;
done:
    while (got-- > 0) PyBuffer_Release(&views[got]);
    Py_DECREF(games);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pick_tracked_doc,
"pick_tracked(moves, counts, actions) -> list\n\n"
"For env i, the Move among the first counts[i] entries of moves[i] (label << 16 | value, as\n"
"encode_tracked wrote them) whose label is actions[i] (int64, N). The Moves are made once per\n"
"value and shared. ValueError naming the first env where no move has that label.");

static PyObject *pick_tracked(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pick_tracked(moves, counts, actions) takes 3 arguments");
        return NULL;
    }
    Py_buffer actions, moves, counts;
    PyObject *picked = NULL;
    if (get_buffer(args[2], &actions, 0, "actions", 0) < 0) return NULL;
    Py_ssize_t n = actions.len / (Py_ssize_t)sizeof(int64_t);
    if (actions.itemsize != sizeof(int64_t)) {
        PyErr_SetString(PyExc_TypeError, "actions must be int64");
        goto release_actions;
    }
    if (get_buffer(args[0], &moves, n * MAX_LEGAL * 4, "moves", 0) < 0) goto release_actions;
    if (get_buffer(args[1], &counts, n * 4, "counts", 0) < 0) goto release_moves;
    if (!(picked = PyList_New(n))) goto release;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint32_t *row = (const uint32_t *)moves.buf + i * MAX_LEGAL;
        int64_t want = ((const int64_t *)actions.buf)[i];
        int count = ((const int32_t *)counts.buf)[i], k = 0;
        while (k < count && (int64_t)(row[k] >> 16) != want) k++;
        PyObject *move = k < count ? cached_move(row[k] & 0xffff) : NULL;
        if (!move) {
            if (k == count)
                PyErr_Format(PyExc_ValueError, "env %zd: action %lld is not a legal move", i, (long long)want);
            Py_CLEAR(picked);
            break;
        }
        PyList_SET_ITEM(picked, i, move);
    }
release:
    PyBuffer_Release(&counts);
release_moves:
    PyBuffer_Release(&moves);
release_actions:
    PyBuffer_Release(&actions);
    return picked;
}

PyDoc_STRVAR(legal_move_values_doc,
"legal_move_values(boards) -> list\n\n"
"The legal moves of each rsshogi Board's position (read through its packed SFEN) as sorted\n"
"lists of move values, by legal_moves_of: what the environment's masks are made of (tests\n"
"compare it with Board.legal_moves()).");

/* The sorted list of the legal move values of `board`'s position (legal_move_values). */
static PyObject *board_move_values(PyObject *board) {
    Position pos;
    Scratch s;
    uint16_t moves[MAX_LEGAL];
    int in_check;
    PyObject *packed = PyObject_CallMethodNoArgs(board, str_to_packed_sfen);
    int bad = !packed || decode_packed_object(packed, &pos) < 0;
    Py_XDECREF(packed);
    if (bad) return NULL;
    scratch_init(&s, &pos);
    int count = legal_moves_of(&s, pos.turn, moves, &in_check);
    PyObject *values = PyList_New(count);
    for (int k = 0; values && k < count; k++) {
        PyObject *v = PyLong_FromLong(moves[k]);
        if (!v) Py_CLEAR(values);
        else PyList_SET_ITEM(values, k, v);
    }
    if (values && PyList_Sort(values) < 0) Py_CLEAR(values);
    return values;
}

static PyObject *legal_move_values(PyObject *self, PyObject *boards) {
    (void)self;
    PyObject *seq = PySequence_Fast(boards, "boards must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *values = board_move_values(PySequence_Fast_GET_ITEM(seq, i));
        if (!values) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, values);
    }
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_planes", (PyCFunction)(void (*)(void))encode_planes, METH_FASTCALL, encode_planes_doc},
    {"fill_masks", (PyCFunction)(void (*)(void))fill_masks, METH_FASTCALL, fill_masks_doc},
    {"encode_packed", (PyCFunction)(void (*)(void))encode_packed, METH_FASTCALL, encode_packed_doc},
    {"encode_games", (PyCFunction)(void (*)(void))encode_games, METH_FASTCALL, encode_games_doc},
    {"set_move_layout", (PyCFunction)set_move_layout, METH_O, set_move_layout_doc},
    {"pick_moves", (PyCFunction)(void (*)(void))pick_moves, METH_FASTCALL, pick_moves_doc},
    {"apply_moves", (PyCFunction)(void (*)(void))apply_moves, METH_FASTCALL, apply_moves_doc},
    {"reload_positions", (PyCFunction)(void (*)(void))reload_positions, METH_FASTCALL, reload_positions_doc},
    {"encode_tracked", (PyCFunction)(void (*)(void))encode_tracked, METH_FASTCALL, encode_tracked_doc},
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_FASTCALL, encode_rows_doc},
    {"mate_planes", (PyCFunction)(void (*)(void))mate_planes, METH_FASTCALL, mate_planes_doc},
    {"mate_planes_boards", (PyCFunction)(void (*)(void))mate_planes_boards, METH_FASTCALL, mate_planes_boards_doc},
    {"pick_tracked", (PyCFunction)(void (*)(void))pick_tracked, METH_FASTCALL, pick_tracked_doc},
    {"legal_move_values", (PyCFunction)legal_move_values, METH_O, legal_move_values_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "keisei.shogi._native",
    "Batch encoding of observations and legal masks (see keisei.shogi.features).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_codes();
    if (init_tables() < 0) {
        PyErr_SetString(PyExc_RuntimeError, "keisei._native: bad movement table");
        return NULL;
    }
    init_mate_tables();
    BOARD_BB = ((BB)1 << NSQ) - 1;
    for (int sq = 0; sq < 128; sq++) SQUARE_BB[sq] = (BB)1 << sq;
    if (!str_board && !(str_board = PyUnicode_InternFromString("_board"))) return NULL;
    if (!str_legal_moves && !(str_legal_moves = PyUnicode_InternFromString("legal_moves"))) return NULL;
    if (!str_to_packed_sfen && !(str_to_packed_sfen = PyUnicode_InternFromString("to_packed_sfen"))) return NULL;
    if (!str_repeats && !(str_repeats = PyUnicode_InternFromString("_repeats"))) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "NUM_PLANES", NUM_PLANES) < 0 ||
        PyModule_AddIntConstant(m, "POSITION_SIZE", (long)POSITION_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "NUM_LABELS", NUM_LABELS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_LEGAL", MAX_LEGAL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
