/* SQLite's sqlite3rebaser_configure leaks a change of the rebase buffer (seen with 3.51.3 and
** 3.54.1): a change for a row whose existing entry is an indirect DELETE.
**
** sessionChangeMerge (bRebase) means to keep the existing indirect DELETE (`*ppNew = pExist`),
** but then ends with `*ppNew = pNew`, which is still NULL: the existing entry, already unlinked
** from the hash table by sessionOneChangeToHash, is neither linked back nor freed.
**
** Build and run (the amalgamation of libsqlite3-sys, LeakSanitizer reports 56 bytes in sessionChangeMerge):
**   gcc -g -fsanitize=address -DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_PREUPDATE_HOOK \
**       -I$SQLITE rebaser_configure_leak.c $SQLITE/sqlite3.c -lm -o leak && ./leak
*/
#include <stdio.h>
#include "sqlite3.h"

/* t(k INTEGER PRIMARY KEY, v): DELETE k=1 marked indirect (a conflict resolved with REPLACE),
** then DELETE k=1 again (what a second buffer, or a second run of t, may hold). */
static const unsigned char BUFFER[] = {
  'T', 2, 1, 0, 't', 0,
  0x09, 1, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0x03, 1, 'x',
  0x09, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0x03, 1, 'x',
};

int main(void){
  sqlite3_rebaser *p = 0;
  int rc = sqlite3rebaser_create(&p);
  if( rc==SQLITE_OK ) rc = sqlite3rebaser_configure(p, (int)sizeof(BUFFER), BUFFER);
  printf("sqlite %s: configure rc=%d\n", sqlite3_libversion(), rc);
  sqlite3rebaser_delete(p);
  return rc;
}
