/*
 * liburcu's urcu-mb flavor (readers issue a full memory barrier on entry
 * and on exit of the outermost section), the counterpart of rcu-defer's
 * fence flavor. See shim_body.h.
 */
#define _LGPL_SOURCE
#include <urcu/urcu-mb.h>

#define URCU(name) urcu_mb_##name
#define SHIM(name) peers_urcu_mb_##name
#include "shim_body.h"
