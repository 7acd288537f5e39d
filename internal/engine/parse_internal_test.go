package engine

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/flotilla/flotilla/internal/unit"
)

// TestParseSharedMatchesParse: a parse shared between units with the same
// body gives each unit exactly what parsing it alone gives (its own name,
// its own specifiers expanded, errors naming it), whatever came before.
func TestParseSharedMatchesParse(t *testing.T) {
	plain := []byte("[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=role=worker\n")
	spec := []byte("[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nConflicts=%p@*.service\n")
	bad := []byte("[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nNoSuchKey=1\n")
	units := []struct {
		name string
		body []byte
	}{
		{"a.service", plain},
		{"b.service", plain},
		{"web@1.service", plain},
		{"web@.service", plain}, // a template: not startable
		{"c.socket", plain},     // another type: parsed on its own
		{"bad name.service", plain},
		{"x@1.service", spec},
		{"y@1.service", spec}, // a specifier: its own expansion
		{"p.service", bad},
		{"q.service", bad}, // the error names q
	}
	shared := map[string]*unit.File{}
	for _, u := range units {
		hash := unit.Hash(u.body)
		got := parseShared(u.name, hash, u.body, shared)
		want, err := unit.Parse(u.name, u.body)
		if err == nil {
			err = want.CheckStartable()
		}
		if fmt.Sprint(got.err) != fmt.Sprint(err) {
			t.Errorf("%s: error %v, parsed alone %v", u.name, got.err, err)
		}
		if got.hash != hash {
			t.Errorf("%s: hash %s, want %s", u.name, got.hash, hash)
		}
		if err == nil && !reflect.DeepEqual(got.file, want) {
			t.Errorf("%s: shared parse\n%+v\nparsed alone\n%+v", u.name, got.file, want)
		}
	}
	if len(shared) == 0 {
		t.Error("nothing shared: every body was parsed in full")
	}
}
