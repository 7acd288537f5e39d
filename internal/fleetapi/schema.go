package fleetapi

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"

	gsunit "github.com/coreos/go-systemd/v22/unit"

	"github.com/flotilla/flotilla/internal/unit"
)

// The JSON entities of fleet's API v1 (schema/v1.json), field for field.

// Machine is a machine as the API shows it.
type Machine struct {
	ID        string            `json:"id,omitempty"`
	PrimaryIP string            `json:"primaryIP,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
}

// MachinePage is one page of machines.
type MachinePage struct {
	Machines      []*Machine `json:"machines,omitempty"`
	NextPageToken string     `json:"nextPageToken,omitempty"`
}

// UnitOption is one assignment of a unit file.
type UnitOption struct {
	Section string `json:"section,omitempty"`
	Name    string `json:"name,omitempty"`
	Value   string `json:"value,omitempty"`
}

// Unit is a submitted unit.
type Unit struct {
	Name         string        `json:"name,omitempty"`
	Options      []*UnitOption `json:"options,omitempty"`
	DesiredState string        `json:"desiredState,omitempty"`
	CurrentState string        `json:"currentState,omitempty"`
	MachineID    string        `json:"machineID,omitempty"`
}

// UnitPage is one page of units.
type UnitPage struct {
	Units         []*Unit `json:"units,omitempty"`
	NextPageToken string  `json:"nextPageToken,omitempty"`
}

// UnitState is a unit's state on one machine.
type UnitState struct {
	Name               string `json:"name,omitempty"`
	Hash               string `json:"hash,omitempty"`
	MachineID          string `json:"machineID,omitempty"`
	SystemdLoadState   string `json:"systemdLoadState,omitempty"`
	SystemdActiveState string `json:"systemdActiveState,omitempty"`
	SystemdSubState    string `json:"systemdSubState,omitempty"`
}

// UnitStatePage is one page of unit states.
type UnitStatePage struct {
	States        []*UnitState `json:"states,omitempty"`
	NextPageToken string       `json:"nextPageToken,omitempty"`
}

// OptionsOf returns a unit body's options as fleet reads them (go-systemd's
// deserializer), falling back to flotilla's own parser for a body that
// go-systemd refuses (flotilla accepted it when it was submitted).
func OptionsOf(name string, body []byte) []*UnitOption {
	if opts, err := gsunit.DeserializeOptions(bytes.NewReader(body)); err == nil {
		out := make([]*UnitOption, len(opts))
		for i, o := range opts {
			out[i] = &UnitOption{Section: o.Section, Name: o.Name, Value: o.Value}
		}
		return out
	}
	f, err := unit.Parse(name, body)
	if err != nil {
		return nil
	}
	out := make([]*UnitOption, len(f.Options))
	for i, o := range f.Options {
		out[i] = &UnitOption{Section: o.Section, Name: o.Name, Value: o.Value}
	}
	return out
}

// Serialize writes options as a unit file, as fleet stores them
// (go-systemd's serializer).
func Serialize(opts []*UnitOption) []byte {
	gs := make([]*gsunit.UnitOption, len(opts))
	for i, o := range opts {
		gs[i] = &gsunit.UnitOption{Section: o.Section, Name: o.Name, Value: o.Value}
	}
	b, _ := io.ReadAll(gsunit.Serialize(gs))
	return b
}

// FleetHash is the hash fleet gives a unit with these options: the hex SHA-1
// of their serialization. fleetctl shows its first 7 characters.
func FleetHash(opts []*UnitOption) string {
	sum := sha1.Sum(Serialize(opts))
	return hex.EncodeToString(sum[:])
}

// pageToken is fleet's page token: page size and 1-based page number,
// little-endian uint16s, base64url.
type pageToken struct {
	Limit, Page uint16
}

func (t pageToken) encode() string {
	var b [4]byte
	binary.LittleEndian.PutUint16(b[0:], t.Limit)
	binary.LittleEndian.PutUint16(b[2:], t.Page)
	return base64.URLEncoding.EncodeToString(b[:])
}

// readPageToken reads the request's nextPageToken (page 1 when absent).
func readPageToken(u *url.URL, limit int) (pageToken, error) {
	vs := u.Query()["nextPageToken"]
	switch len(vs) {
	case 0:
		return pageToken{Limit: uint16(limit), Page: 1}, nil
	case 1:
	default:
		return pageToken{}, errors.New("too many values for page token")
	}
	b, err := base64.URLEncoding.DecodeString(vs[0])
	if err != nil {
		return pageToken{}, err
	}
	if len(b) < 4 {
		return pageToken{}, errors.New("unexpected EOF")
	}
	t := pageToken{Limit: binary.LittleEndian.Uint16(b[0:]), Page: binary.LittleEndian.Uint16(b[2:])}
	if int(t.Limit) != limit {
		return pageToken{}, fmt.Errorf("token limit must be %d", limit)
	}
	if t.Page == 0 {
		return pageToken{}, errors.New("token page must be greater than zero")
	}
	return t, nil
}

// page cuts one page out of n items: the index range and the next token ("" on
// the last page).
func page(n int, t pageToken) (start, stop int, next string) {
	start = int(t.Page-1) * int(t.Limit)
	stop = int(t.Page) * int(t.Limit)
	if start >= n {
		return 0, 0, ""
	}
	if stop > n { // as fleet: a full last page still gets a token (to an empty page)
		return start, n, ""
	}
	return start, stop, pageToken{Limit: t.Limit, Page: t.Page + 1}.encode()
}
