package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/flotilla/flotilla/internal/cmdline"
)

// configKeys maps confd's config-file keys (and ours) to flag names.
func configKeys() map[string]string {
	return map[string]string{
		"backend": "backend", "nodes": "node", "node": "node", "prefix": "prefix", "confdir": "confdir",
		"interval": "interval", "log-level": "log-level", "log_level": "log-level", "noop": "noop",
		"sync-only": "sync-only", "sync_only": "sync-only", "watch": "watch", "onetime": "onetime",
		"client_cert": "client-cert", "client_key": "client-key", "client_cakeys": "client-ca-keys",
		"client-ca-keys": "client-ca-keys", "client_ca_keys": "client-ca-keys",
		"username": "username", "password": "password", "scheme": "scheme", "basic_auth": "basic-auth",
		"file": "file", "keep-stage-file": "keep-stage-file", "keep_stage_file": "keep-stage-file",
		"wait": "wait", "metrics-addr": "metrics-addr", "metrics_addr": "metrics-addr",
		"log-format": "log-format", "log_format": "log-format", "strict": "strict",
		"client_insecure": "client-insecure", "srv_domain": "srv-domain", "srv_record": "srv-record",
	}
}

// applyEnv sets, from CONFD_<FLAG> environment variables, every flag not
// given on the command line, and marks it in set.
func applyEnv(fs *flag.FlagSet, set map[string]bool) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || f.Name == "version" {
			return
		}
		names := []string{"CONFD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))}
		switch f.Name {
		case "node":
			names = append(names, "CONFD_NODES")
		case "client-ca-keys":
			names = append(names, "CONFD_CLIENT_CAKEYS")
		}
		for _, n := range names {
			if v, ok := os.LookupEnv(n); ok && v != "" {
				if err := fs.Set(f.Name, v); err != nil && envErr == nil {
					envErr = cmdline.Usagef("%s=%q: %v", n, v, err)
				}
				set[f.Name] = true
				break
			}
		}
	})
	return envErr
}

// applyConfigFile sets, from confd's TOML config file, every flag not yet set.
func applyConfigFile(fs *flag.FlagSet, set map[string]bool, file string, explicit, strict bool, log *slog.Logger) error {
	b, err := os.ReadFile(file)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if _, err := toml.Decode(string(b), &m); err != nil {
		return fmt.Errorf("config file %s: %w", file, err)
	}
	known := configKeys()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name, ok := known[k]
		if !ok {
			msg := fmt.Sprintf("config file %s: unknown key %q", file, k)
			if strict {
				return errors.New(msg)
			}
			log.Warn(msg)
			continue
		}
		if set[name] {
			continue
		}
		var vals []string
		switch v := m[k].(type) {
		case []any:
			for _, x := range v {
				vals = append(vals, fmt.Sprint(x))
			}
		case string:
			vals = []string{v}
		case int64:
			vals = []string{strconv.FormatInt(v, 10)}
		case bool:
			vals = []string{strconv.FormatBool(v)}
		default:
			return fmt.Errorf("config file %s: key %q: unsupported value %v", file, k, v)
		}
		for _, v := range vals {
			if err := fs.Set(name, v); err != nil {
				return fmt.Errorf("config file %s: key %q: %w", file, k, err)
			}
		}
		set[name] = true
	}
	return nil
}
