/*
 * Build-time probe (see build.rs): compiles and links only if liburcu's
 * headers and the urcu-memb and urcu-mb libraries are installed.
 */
#define _LGPL_SOURCE
#include <urcu/urcu-memb.h>
#include <urcu/urcu-mb.h>

int main(void)
{
	urcu_memb_register_thread();
	urcu_memb_unregister_thread();
	urcu_mb_register_thread();
	urcu_mb_unregister_thread();
	return 0;
}
