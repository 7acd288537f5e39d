package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	bi := func(mainVersion string, settings ...debug.BuildSetting) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: mainVersion}, Settings: settings}
	}
	tests := map[string]struct {
		stamped, commit string
		modified        bool
		bi              *debug.BuildInfo
		want            string
	}{
		"release build from a checkout": {
			stamped: "1.2.3", bi: bi("(devel)", debug.BuildSetting{Key: "vcs.revision", Value: rev}),
			want: "1.2.3 (commit 0123456789ab, go1.26.8)",
		},
		"dirty development build": {
			bi:   bi("(devel)", debug.BuildSetting{Key: "vcs.revision", Value: rev}, debug.BuildSetting{Key: "vcs.modified", Value: "true"}),
			want: "devel (commit 0123456789ab-dirty, go1.26.8)",
		},
		"go install of a tagged module": {
			bi:   bi("v1.4.0"),
			want: "v1.4.0 (commit unknown, go1.26.8)",
		},
		"stamp wins over module version": {
			stamped: "2.0.0", bi: bi("v1.4.0"),
			want: "2.0.0 (commit unknown, go1.26.8)",
		},
		"commit from the linker in a worktree": {
			stamped: "1.2.3", commit: rev, modified: true, bi: bi("(devel)"),
			want: "1.2.3 (commit 0123456789ab-dirty, go1.26.8)",
		},
		"build info wins over the linker's commit": {
			commit: "fedcba9876543210", modified: true, bi: bi("(devel)", debug.BuildSetting{Key: "vcs.revision", Value: rev}),
			want: "devel (commit 0123456789ab, go1.26.8)",
		},
		"no build info": {
			want: "devel (commit unknown, unknown Go)",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := fromBuildInfo(tc.stamped, tc.bi, tc.commit, tc.modified).String(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
