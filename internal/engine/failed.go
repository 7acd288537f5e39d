package engine

import (
	"strings"
)

// Failed units (docs/design.md, "Failed units"): an agent that gives up on
// a unit after its restart budget writes a failure record
// (<prefix>failed/<unit>/<machine>, registry.Failure) bound to a lease of
// the unit's AvoidFailedFor. Placement's one input from it: the machines a
// unit avoids (schedule.Unit.Avoid), those with a record for the unit's
// current body and OnFailed=move. The unit then leaves that machine like
// any unit whose machine no longer satisfies it (its state there is
// "failed", not running, so it starts elsewhere at once), and comes back
// into consideration when the record runs out (a delete: a pass).

// failureChange reports whether a key (relative to the prefix) is a failure
// record, whose writes and expiries call for a pass.
func failureChange(rest string) bool { return strings.HasPrefix(rest, "failed/") }
