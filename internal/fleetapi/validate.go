package fleetapi

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"

	gsunit "github.com/coreos/go-systemd/v22/unit"

	"github.com/flotilla/flotilla/internal/unit"
)

// ValidateOptions checks a unit's options as fleet's API does before
// storing them — go-systemd must read back what it serialized, and the
// [X-Fleet] requirements must be satisfiable together, with fleet's messages
// — and then as flotilla's own parser does (what the agents will run).
func ValidateOptions(name string, opts []*UnitOption) error {
	body := Serialize(opts)
	if _, err := gsunit.DeserializeOptions(bytes.NewReader(body)); err != nil {
		return err
	}
	// fleet's combination rules first, on the options as written, so that its
	// messages come out; then flotilla's parser.
	var target, global bool
	var peers, conflicts, replaces []string
	for _, o := range opts {
		if o.Section != "X-Fleet" {
			continue
		}
		switch o.Name {
		case "MachineID", "X-ConditionMachineID":
			target = target || o.Value != ""
		case "MachineOf", "X-ConditionMachineOf":
			peers = append(peers, strings.Fields(o.Value)...)
		case "Conflicts", "X-Conflicts":
			conflicts = append(conflicts, strings.Fields(o.Value)...)
		case "Replaces":
			replaces = append(replaces, strings.Fields(o.Value)...)
		case "Global":
			g, err := unit.ParseBool(o.Value)
			global = global || (err == nil && g)
		}
	}
	for _, peer := range peers {
		for _, c := range conflicts {
			if ok, _ := path.Match(c, peer); ok {
				return fmt.Errorf("unresolvable requirements: peer %q matches conflict %q", peer, c)
			}
		}
		for _, r := range replaces {
			if ok, _ := path.Match(r, peer); ok {
				return fmt.Errorf("unresolvable requirements: peer %q matches replace %q", peer, r)
			}
		}
	}
	switch {
	case target && len(peers) > 0:
		return errors.New("MachineID cannot be used with Peers")
	case target && len(conflicts) > 0:
		return errors.New("MachineID cannot be used with Conflicts")
	case target && global:
		return errors.New("MachineID cannot be used with Global")
	case target && len(replaces) > 0:
		return errors.New("MachineID cannot be used with Replaces")
	case global && len(peers) > 0:
		//lint:ignore ST1005 fleet's own message, word for word (fleetctl prints it)
		return errors.New("Global cannot be used with Peers")
	case global && len(replaces) > 0:
		//lint:ignore ST1005 fleet's own message, word for word (fleetctl prints it)
		return errors.New("Global cannot be used with Replaces")
	case len(conflicts) > 0 && len(replaces) > 0:
		//lint:ignore ST1005 fleet's own message, word for word (fleetctl prints it)
		return errors.New("Conflicts cannot be used with Replaces")
	}
	if _, err := unit.Parse(name, body); err != nil {
		return err
	}
	return nil
}
