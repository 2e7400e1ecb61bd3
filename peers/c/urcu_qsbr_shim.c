/*
 * liburcu's urcu-qsbr flavor: a registered thread is online, its read-side
 * critical sections are empty (rcu_read_lock and rcu_read_unlock compile to
 * nothing outside debug builds), and it reports quiescent states with
 * rcu_quiescent_state(); the counterpart of rcu-defer's online threads. See
 * shim_body.h; the extra functions below are qsbr's own.
 */
#define _LGPL_SOURCE
#include <urcu/urcu-qsbr.h>

#define URCU(name) urcu_qsbr_##name
#define SHIM(name) peers_urcu_qsbr_##name
#include "shim_body.h"

void SHIM(quiescent_state)(void)
{
	URCU(quiescent_state)();
}

void SHIM(thread_offline)(void)
{
	URCU(thread_offline)();
}

void SHIM(thread_online)(void)
{
	URCU(thread_online)();
}
