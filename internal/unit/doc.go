// Package unit reads systemd unit files as fleet did: names, the body as
// submitted, the [X-Fleet] placement section, and the [Service] section the
// process executor runs. It is pure (no I/O) and safe for concurrent use.
//
// Names:
//   - ParseName("nginx@1.service") → Name{Prefix "nginx", Instance "1",
//     Type "service"}; IsTemplate, IsInstance, TemplateName, Instantiate.
//
// Files:
//   - Parse(name, body) parses systemd syntax (sections, repeated keys,
//     # and ; comments, backslash continuation) and validates [X-Fleet]
//     and, for .service units, [Service]; errors are *Error, printed as
//     "unit nginx@.service line 7: …".
//   - Hash(body) is the hex SHA-1 of the body as submitted.
//   - (*File).Instantiate(instance) makes an instance of a template, with
//     [X-Fleet] specifiers re-expanded; (*File).CheckStartable rejects
//     templates; (*File).Values reads any key.
//
// [X-Fleet] (type Fleet): MachineID (full id or unique prefix), MachineOf,
// MachineMetadata (k=v, k!=v, k=v1|v2; see MetadataMatch), Conflicts
// (globs), Global, Replaces, and fleet's deprecated X-ConditionMachineID,
// X-ConditionMachineBootID, X-ConditionMachineOf,
// X-ConditionMachineMetadata and X-Conflicts. Values may list several
// items separated by whitespace, each optionally double-quoted (fleet's
// `MachineMetadata="a=b" "c=d"`); an empty assignment resets the key, as
// in systemd. Unknown keys are rejected with their line; Global=true with
// MachineID, MachineOf or Replaces is rejected. The specifiers %n %N %p %i
// %% are expanded in values for the unit's name (a template is validated
// as its instance "1" would be).
//
// [X-Flotilla] (type Flotilla): flotilla-only settings beside [X-Fleet].
// OnDisconnect=keep-running (default) or stop (fenced: the agent kills the
// unit before its machine's lease can expire, so it never runs twice);
// the failure policy (FailurePolicy): RestartFailed=N (default 3) starts a
// failed unit again on its machine up to N times within
// RestartFailedWindow= (default 10min), then OnFailed=move (default; the
// machine is avoided for AvoidFailedFor=, default 1h) or stay; unknown
// keys and values are rejected with their line.
//
// [Service] (type Service, Exec): Type, Exec{StartPre,Start,StartPost,
// Stop,StopPost}, Restart, RestartSec, Timeout{Start,Stop,}Sec,
// Environment, EnvironmentFile, WorkingDirectory, User, RemainAfterExit.
// Exec lines are split with systemd's rules (ParseExec, SplitWords):
// quotes, C escapes, the - @ + ! !! : prefixes, ";" between commands.
// At run time an executor calls (Exec).Command(specifiers, env), which
// expands specifiers in each word (ExpandSpecifiers: every systemd
// specifier, see Specifiers), then variables (ExpandEnv: a word "$VAR"
// splits on whitespace, ${VAR} is spliced as one word). ParseTimespan reads
// systemd durations; ParseBool systemd booleans. TestExecMatchesSystemd
// runs unit files through a real systemd (252, in a private namespace) and
// checks that Parse and Command give each program the argv and environment
// systemd gives it; TestTimespanMatchesSystemd checks ParseTimespan against
// systemd-analyze.
package unit
