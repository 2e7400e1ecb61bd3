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

/*
 * Reads per second with a writer doing back-to-back grace periods: the
 * calling thread (registered, so online) reads for `nanos` nanoseconds in
 * read-side critical sections that load a shared pointer and the value
 * behind it, and reports a quiescent state every 1024 reads, as
 * test_urcu_qsbr does; meanwhile a writer thread swaps the pointer and
 * calls synchronize_rcu() in a loop. Returns the reads; *writes gets the
 * writer's grace periods.
 */
#include <pthread.h>
#include <time.h>

static int values[2] = { 8, 8 };
static int *shared = &values[0];
static int stop_writer;
static uint64_t nr_writes;

static void *writer(void *arg)
{
	(void) arg;
	uint64_t n = 0;
	while (!CMM_LOAD_SHARED(stop_writer)) {
		rcu_xchg_pointer(&shared, &values[n & 1]);
		URCU(synchronize_rcu)();
		n++;
	}
	CMM_STORE_SHARED(nr_writes, n);
	return NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

uint64_t SHIM(reads_under_writer)(uint64_t nanos, uint64_t *writes)
{
	pthread_t tid;
	uint64_t reads = 0, sum = 0, deadline = now_ns() + nanos;

	CMM_STORE_SHARED(stop_writer, 0);
	if (pthread_create(&tid, NULL, writer, NULL) != 0)
		return 0;
	for (;;) {
		for (int i = 0; i < 1024; i++) {
			URCU(read_lock)();
			sum += *rcu_dereference(shared);
			URCU(read_unlock)();
		}
		reads += 1024;
		URCU(quiescent_state)();
		if (now_ns() >= deadline)
			break;
	}
	CMM_STORE_SHARED(stop_writer, 1);
	/* The writer's last grace period must not wait for this thread. */
	URCU(thread_offline)();
	pthread_join(tid, NULL);
	URCU(thread_online)();
	*writes = CMM_LOAD_SHARED(nr_writes);
	return sum == 8 * reads ? reads : 0;
}
