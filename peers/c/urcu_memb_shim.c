/*
 * liburcu's urcu-memb flavor (readers use compiler barriers only; the
 * writer issues membarrier(2)), the same scheme as rcu-defer's membarrier
 * flavor and QEMU's RCU. See shim_body.h.
 */
#define _LGPL_SOURCE
#include <urcu/urcu-memb.h>

#define URCU(name) urcu_memb_##name
#define SHIM(name) peers_urcu_memb_##name
#include "shim_body.h"
