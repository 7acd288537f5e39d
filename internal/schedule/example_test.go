package schedule_test

import (
	"fmt"

	"github.com/flotilla/flotilla/internal/schedule"
	"github.com/flotilla/flotilla/internal/unit"
)

func ExamplePlace() {
	keepApart := unit.Fleet{
		Conflicts: []string{"nginx@*.service"},
		Metadata:  []unit.MetadataMatch{{Key: "role", Op: "!=", Values: []string{"lb"}}},
	}
	machines := []schedule.Machine{
		{ID: "lb", Metadata: map[string]string{"role": "lb"}},
		{ID: "w1"}, {ID: "w2"},
	}
	units := []schedule.Unit{
		{Name: "nginx@1.service", Fleet: keepApart},
		{Name: "nginx@2.service", Fleet: keepApart},
		{Name: "nginx@3.service", Fleet: keepApart},
		{Name: "prefetch.service", Fleet: unit.Fleet{Global: true}},
	}
	r := schedule.Place(units, machines)
	fmt.Println(r.Targets)
	fmt.Println(r.Global)
	fmt.Println(r.Unplaced)
	// Output:
	// map[nginx@1.service:w1 nginx@2.service:w2]
	// map[prefetch.service:[lb w1 w2]]
	// map[nginx@3.service:conflicts with nginx@1.service, nginx@2.service on every machine matching role!=lb]
}
