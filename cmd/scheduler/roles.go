package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// renderStatusPrefix is where render -publish-status writes (its default);
// announceStatePrefix holds announce's withdrawn and maintenance markers.
const (
	renderStatusPrefix  = "/flotilla/render/"
	announceStatePrefix = "/flotilla/announce/"
)

// roleSet is every etcd role `scheduler roles` creates, by name.
func roleSet(prefix string, machines, renderPrefixes []string, announcePrefix string) map[string][]store.Perm {
	rd := func(p string) store.Perm { return store.Perm{Prefix: p, Read: true} }
	rw := func(p string) store.Perm { return store.Perm{Prefix: p, Read: true, Write: true} }
	roles := map[string][]store.Perm{
		// operators submit, start, stop and destroy; ask for journals; publish
		// revocations; roll, drain and move (pins, drain marks, move requests,
		// the rollout records the driver carries out).
		"flotilla-operator": {rd(prefix), rw(prefix + "units/"), rw(prefix + "jobs/"), rw(prefix + "journal/"), rw(prefix + "pki/"),
			rw(prefix + "pins/"), rw(prefix + "drain/"), rw(prefix + "moves/"), rw(prefix + "rollouts/")},
		// the engine targets units at machines, holds its election, clears the
		// move requests it carried out; a serve's API writes machine metadata.
		"flotilla-engine": {rd(prefix), rw(prefix + "schedule/"), rw(prefix + "unplaced/"), rw(prefix + "engine"),
			rw(prefix + "moves/"), rw(prefix + "metadata/")},
		// the rollout driver (elected among the serves) points jobs at the
		// bodies the operator stored with a rollout, pins and moves units,
		// and writes the rollout records; it writes no body.
		"flotilla-rollout": {rd(prefix), rw(prefix + "jobs/"), rw(prefix + "pins/"), rw(prefix + "moves/"),
			rw(prefix + "rollouts/"), rw(prefix + "rollout-driver")},
		// render reads its prefixes and writes only status keys.
		"flotilla-render": append([]store.Perm{rw(renderStatusPrefix)}, mapPerms(renderPrefixes, rd)...),
		// announce writes only under its prefix and its own markers
		// (withdrawn, maintenance), and reads what renders applied.
		"flotilla-announce": {rw(announcePrefix), rw(announceStatePrefix), rd(renderStatusPrefix)},
	}
	for _, m := range machines {
		// an agent writes its presence key and unit states, and answers journal requests.
		roles["flotilla-agent-"+m] = []store.Perm{rd(prefix), {Prefix: prefix + "machines/" + m, Read: true, Write: true, Exact: true},
			rw(prefix + "states/"), rw(prefix + "journal/")}
	}
	return roles
}

func mapPerms(ps []string, f func(string) store.Perm) []store.Perm {
	var out []store.Perm
	for _, p := range ps {
		out = append(out, f(p))
	}
	return out
}

// rolesCmd creates the roles and one user per part (its password in
// --password-dir, mode 0600): flotilla-operator, flotilla-engine,
// flotilla-render, flotilla-announce, and flotilla-machine-<id> (agent of
// that machine, engine and rollout driver candidate, what `serve` needs)
// per --machines.
func (cl *client) rolesCmd(ctx context.Context, _ []string) error {
	o := cl.o
	if o.passwordDir == "" {
		return cmdline.Usagef("roles: --password-dir DIR: where to write the new users' passwords")
	}
	if err := os.MkdirAll(o.passwordDir, 0o700); err != nil {
		return fmt.Errorf("roles: %w", err)
	}
	var machines []string
	for _, m := range strings.Split(o.machines, ",") {
		if m = strings.TrimSpace(m); m != "" {
			machines = append(machines, m)
		}
	}
	prefix := o.prefix
	if prefix == "" {
		prefix = registry.DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if o.rollout.announcePrefix == "-" || o.rollout.announcePrefix == "" {
		return cmdline.Usagef("roles: --announce-prefix %q: name the prefix announce may write", o.rollout.announcePrefix)
	}
	renderPrefixes := strings.Split(o.renderPref, ",")
	c := cl.reg.Client()
	for name, perms := range roleSet(prefix, machines, renderPrefixes, o.rollout.announcePrefix) {
		if err := c.EnsureRole(ctx, name, perms); err != nil {
			return err
		}
	}
	users := map[string][]string{
		"flotilla-operator": {"flotilla-operator"}, "flotilla-engine": {"flotilla-engine"},
		"flotilla-render": {"flotilla-render"}, "flotilla-announce": {"flotilla-announce"},
	}
	for _, m := range machines {
		users["flotilla-machine-"+m] = []string{"flotilla-agent-" + m, "flotilla-engine", "flotilla-rollout"}
	}
	for user, roles := range users {
		b := make([]byte, 18)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		pw := hex.EncodeToString(b)
		path := filepath.Join(o.passwordDir, user)
		created, err := c.EnsureUser(ctx, user, pw, roles...)
		if err != nil {
			return err
		}
		if created {
			if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
				return fmt.Errorf("roles: password of %s: %w", user, err)
			}
			fmt.Fprintf(cl.stdout, "user %s (roles %s): password in %s\n", user, strings.Join(roles, ","), path)
		} else {
			fmt.Fprintf(cl.stdout, "user %s existed: roles %s granted, password unchanged\n", user, strings.Join(roles, ","))
		}
	}
	return nil
}
