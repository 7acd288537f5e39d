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
// These are the module's only package-level variables, and only the linker
// writes them. Empty version means a development build. commit and modified
// stand in for the build info's vcs.revision and vcs.modified where the go
// command does not stamp them (a git worktree, whose .git is a file; builds
// with -buildvcs=false): make build and scripts/dist.sh set them from git.
var version, commit, modified string

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
	return fromBuildInfo(version, bi, commit, modified == "true")
}

// fromBuildInfo prefers what the go command recorded to the linker's
// stampCommit and stampModified.
func fromBuildInfo(stamped string, bi *debug.BuildInfo, stampCommit string, stampModified bool) Info {
	in := Info{Version: stamped, Commit: stampCommit, Modified: stampModified}
	if bi != nil {
		in.GoVersion = bi.GoVersion
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Commit, in.Modified = s.Value, false
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
