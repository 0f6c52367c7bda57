/*-------------------------------------------------------------------------
 *
 * asan_preload.c
 *	  A tiny library LD_PRELOADed next to the AddressSanitizer runtime into
 *	  the (uninstrumented) postgres executable.  It only defines
 *	  swift_demangle.
 *
 * Why: when the ASan runtime is preloaded, it initializes lazily, at the
 * first malloc.  In Debian's postgres that first malloc happens inside
 * libgpg-error's constructor, in bindtextdomain(), which holds glibc's
 * gettext lock (_nl_state_lock).  ASan's initialization looks up the symbol
 * swift_demangle with dlsym() and, when it is missing, calls dlerror(), which
 * translates the message with gettext and takes the same lock: the process
 * deadlocks before main().  With the symbol present, dlsym() succeeds,
 * dlerror() has nothing to translate, and postgres starts.  ASan would call
 * it only to demangle Swift symbol names, which freshpay has none of; it
 * answers "cannot demangle".
 *
 * Built without sanitizers (see Makefile).
 *
 *-------------------------------------------------------------------------
 */
#include <stddef.h>
#include <stdint.h>

extern char *swift_demangle(const char *mangled, size_t mangled_length,
							char *output, size_t *output_size, uint32_t flags);

char *
swift_demangle(const char *mangled, size_t mangled_length,
			   char *output, size_t *output_size, uint32_t flags)
{
	return NULL;
}
