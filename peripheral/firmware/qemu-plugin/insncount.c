/* Exact guest instruction counts for the Vouch firmware, as a QEMU TCG plugin.
 *
 * Debian 12's qemu-system-arm (7.2) exports the plugin API but ships neither
 * qemu-plugin.h nor the contrib plugins, so the few API-v1 declarations used
 * here are written out below. Build: gcc -O2 -shared -fPIC -o libinsncount.so insncount.c
 *
 * Arguments (-plugin ./libinsncount.so,mark=0x...,calls=FILE):
 *   mark=ADDR   address of the firmware's hs_mark(): each execution prints
 *               "MARK <n> <instructions so far>" (n counts from 0).
 *   calls=FILE  lines "<call site> <return address> <name>" (hex addresses, as
 *               run.sh extracts them from the ELF's `bl` instructions): each
 *               call prints "CALL <name> <depth> <count at call> <count at return> <low>",
 *               the inclusive instruction count of that call being the difference.
 *   stack=LO:HI the stack region (hex): <low> above is the lowest address in it
 *               that the call (or, for MARK lines, the interval since the
 *               previous mark) wrote to, 0 if none; the stack's depth is HI - low.
 *               MARK lines also give the address of the instruction that wrote it.
 * At exit it prints "TOTAL <instructions>". Without registers (API v1 has no
 * register access) the calls are matched by their return addresses, on a
 * shadow stack: the code must not longjmp, which Rust firmware does not.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef uint32_t qemu_plugin_meminfo_t;
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                                          uint64_t vaddr, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *, qemu_plugin_vcpu_mem_cb_t,
                                      enum qemu_plugin_cb_flags, enum qemu_plugin_mem_rw, void *);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, qemu_plugin_vcpu_tb_trans_cb_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, qemu_plugin_vcpu_udata_cb_t,
                                            enum qemu_plugin_cb_flags, void *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, qemu_plugin_udata_cb_t, void *);
void qemu_plugin_outs(const char *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One vCPU: a plain counter, incremented inline before every instruction. */
static uint64_t insns;
static uint64_t mark_addr = UINT64_MAX;
static unsigned marks;
/* Stack region, and the lowest address written in it since the last mark
 * or tracked call started (UINT64_MAX: none). */
static uint64_t stack_lo, stack_hi;
static uint64_t low = UINT64_MAX;

/* An address with something to do: a call site of a tracked function, the
 * return address of one, or both (two calls in a row). */
struct site {
    uint64_t addr;
    int call;          /* index into names, or -1 */
    uint64_t ret;      /* return address of that call */
    int is_ret;        /* some tracked call returns here */
};
static struct site *sites;
static size_t nsites;
static char **names;
static size_t nnames;

struct frame { uint64_t ret; int name; uint64_t start; uint64_t outer_low; };
static struct frame stack[64];
static int depth;

static uint64_t low_pc;  /* the instruction that wrote `low` (for finding the deepest frame) */

static void on_store(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud) {
    if (vaddr >= stack_lo && vaddr < stack_hi && vaddr < low) {
        low = vaddr;
        low_pc = (uint64_t)(uintptr_t)ud;
    }
}

static unsigned long long shown(uint64_t l) { return l == UINT64_MAX ? 0 : (unsigned long long)l; }

static void on_mark(unsigned int vcpu, void *ud) {
    char buf[96];
    snprintf(buf, sizeof buf, "MARK %u %llu %llx %llx\n", marks++, (unsigned long long)insns, shown(low),
             (unsigned long long)low_pc);
    qemu_plugin_outs(buf);
    low = UINT64_MAX;
}

static void on_site(unsigned int vcpu, void *ud) {
    struct site *s = ud;
    if (s->is_ret && depth > 0 && stack[depth - 1].ret == s->addr) {
        struct frame *f = &stack[--depth];
        char buf[256];
        snprintf(buf, sizeof buf, "CALL %s %d %llu %llu %llx\n", names[f->name], depth,
                 (unsigned long long)f->start, (unsigned long long)insns, shown(low));
        qemu_plugin_outs(buf);
        if (f->outer_low < low) low = f->outer_low;
    }
    if (s->call >= 0) {
        if (depth == (int)(sizeof stack / sizeof stack[0])) {
            qemu_plugin_outs("CALL-STACK-OVERFLOW\n");
            return;
        }
        stack[depth++] = (struct frame){ s->ret, s->call, insns, low };
        low = UINT64_MAX;
    }
}

static struct site *site_at(uint64_t addr, int create) {
    for (size_t i = 0; i < nsites; i++)
        if (sites[i].addr == addr) return &sites[i];
    if (!create) return NULL;
    sites = realloc(sites, (nsites + 1) * sizeof *sites);
    sites[nsites] = (struct site){ addr, -1, 0, 0 };
    return &sites[nsites++];
}

static int name_index(const char *name) {
    for (size_t i = 0; i < nnames; i++)
        if (!strcmp(names[i], name)) return (int)i;
    names = realloc(names, (nnames + 1) * sizeof *names);
    names[nnames] = strdup(name);
    return (int)nnames++;
}

static void load_calls(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    char line[512], name[400];
    unsigned long long call, ret;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%llx %llx %399s", &call, &ret, name) != 3) continue;
        int n = name_index(name);
        struct site *c = site_at(call, 1);
        c->call = n;
        c->ret = ret;
        site_at(ret, 1)->is_ret = 1;
    }
    fclose(f);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn) & ~1ull;
        /* Callbacks run in registration order: the count includes this insn. */
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &insns, 1);
        if (pc == mark_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
        struct site *s = site_at(pc, 0);
        if (s)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_site, QEMU_PLUGIN_CB_NO_REGS, s);
        if (stack_hi)
            qemu_plugin_register_vcpu_mem_cb(insn, on_store, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_W,
                                             (void *)(uintptr_t)pc);
    }
}

static void at_exit(qemu_plugin_id_t id, void *ud) {
    char buf[64];
    snprintf(buf, sizeof buf, "TOTAL %llu\n", (unsigned long long)insns);
    qemu_plugin_outs(buf);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "mark=", 5))
            mark_addr = strtoull(argv[i] + 5, NULL, 0) & ~1ull;
        else if (!strncmp(argv[i], "calls=", 6))
            load_calls(argv[i] + 6);
        else if (!strncmp(argv[i], "stack=", 6)) {
            char *colon;
            stack_lo = strtoull(argv[i] + 6, &colon, 0);
            if (*colon == ':') stack_hi = strtoull(colon + 1, NULL, 0);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
