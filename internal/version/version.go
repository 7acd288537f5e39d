// Package version says which build of flotilla is running: the release version
// stamped in by the linker (make dist VERSION=x.y.z), the VCS commit and the Go
// version read from the binary's build info. Nothing here is kept by hand.
package version

import (
	"fmt"
	"runtime/debug"
)

// version is set at link time:
//
//	go build -ldflags "-X github.com/flotilla/flotilla/internal/version.version=1.2.3"
//
// It is the only package-level variable of the module, and only the linker
// writes it. Empty means a development build.
var version string

// Info is what a binary knows about its own build. The zero value is a
// development build of unknown origin.
type Info struct {
	Version   string // release version from the linker, else the module version, else "devel"
	Commit    string // vcs.revision, "" when built outside a checkout
	Modified  bool   // the checkout had uncommitted changes
	GoVersion string // toolchain that built the binary
}

// Read returns this binary's build information.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(version, bi)
}

func fromBuildInfo(stamped string, bi *debug.BuildInfo) Info {
	in := Info{Version: stamped}
	if bi != nil {
		in.GoVersion = bi.GoVersion
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Commit = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	return in
}

// String is the one-line form --version prints:
// "1.2.3 (commit 0123456789ab, go1.26.8)", "-dirty" after a modified commit.
func (in Info) String() string {
	commit := in.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if commit == "" {
		commit = "unknown"
	}
	if in.Modified {
		commit += "-dirty"
	}
	gov := in.GoVersion
	if gov == "" {
		gov = "unknown Go"
	}
	return fmt.Sprintf("%s (commit %s, %s)", in.Version, commit, gov)
}
