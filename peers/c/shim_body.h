/*
 * The body of one liburcu flavor's shim, included by urcu_memb_shim.c and
 * urcu_mb_shim.c after they have included their flavor's header with
 * _LGPL_SOURCE defined and defined:
 *
 *   URCU(name)  the flavor's function, e.g. URCU(read_lock) is
 *               urcu_memb_read_lock, which _LGPL_SOURCE maps to the static
 *               inline _urcu_memb_read_lock: the read side is compiled into
 *               the loop below, as a C user of liburcu would have it;
 *   SHIM(name)  the name this shim exports to Rust, e.g.
 *               peers_urcu_memb_read_lock_unlock_n.
 *
 * Only the loop is measured; the other functions exist so that Rust can
 * register the thread (liburcu requires it before any read-side critical
 * section) and so that the tests can check the read side is a real one.
 */
#include <stdint.h>

void SHIM(register_thread)(void)
{
	URCU(register_thread)();
}

void SHIM(unregister_thread)(void)
{
	URCU(unregister_thread)();
}

/*
 * n outermost read-side critical sections, empty, one after the other: the
 * measured loop. One call covers a whole Criterion sample, so the cost of
 * the call from Rust is amortized over n. The compiler barrier keeps one
 * loop iteration per section: urcu-qsbr's sections are empty, and without
 * it the loop would be compiled away (urcu-memb's and urcu-mb's sections
 * contain barriers of their own, so it costs them nothing).
 */
void SHIM(read_lock_unlock_n)(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		URCU(read_lock)();
		URCU(read_unlock)();
		__asm__ __volatile__("" ::: "memory");
	}
}

/* For the tests: one section's entry and exit, and whether one is open. */
void SHIM(read_lock)(void)
{
	URCU(read_lock)();
}

void SHIM(read_unlock)(void)
{
	URCU(read_unlock)();
}

int SHIM(read_ongoing)(void)
{
	return URCU(read_ongoing)();
}

void SHIM(synchronize_rcu)(void)
{
	URCU(synchronize_rcu)();
}
