package resources

import (
	"bytes"
	"strings"

	udiff "github.com/aymanbagabas/go-udiff"
)

// DefaultDiffContext is the lines of context around each change of a diff,
// as diff -u has.
const DefaultDiffContext = 3

// NoDiffContext asks for a diff without context lines (0 means the default).
const NoDiffContext = -1

// UnifiedDiff returns a unified diff (3 lines of context) from a to b, or
// nothing when they are equal.
func UnifiedDiff(aName, bName string, a, b []byte) []byte {
	return UnifiedDiffContext(aName, bName, a, b, DefaultDiffContext)
}

// UnifiedDiffContext is UnifiedDiff with n lines of context (0 or
// NoDiffContext: none).
func UnifiedDiffContext(aName, bName string, a, b []byte, n int) []byte {
	if bytes.Equal(a, b) {
		return nil
	}
	n = max(n, 0)
	before, after := string(a), string(b)
	d, err := udiff.ToUnified(aName, bName, before, udiff.Lines(before, after), n)
	if err != nil { // the edits come from the same text: cannot happen
		return []byte("--- " + aName + "\n+++ " + bName + "\n(diff failed: " + err.Error() + ")\n")
	}
	return []byte(d)
}

// colorDiff colours a unified diff for a terminal: removed lines red, added
// green, hunk headers cyan.
func colorDiff(d []byte) []byte {
	var out strings.Builder
	for _, l := range strings.SplitAfter(string(d), "\n") {
		if l == "" {
			continue
		}
		body := strings.TrimSuffix(l, "\n")
		switch {
		case strings.HasPrefix(l, "--- "), strings.HasPrefix(l, "+++ "):
			out.WriteString("\x1b[1m" + body + "\x1b[0m\n")
		case strings.HasPrefix(l, "@@"):
			out.WriteString("\x1b[36m" + body + "\x1b[0m\n")
		case strings.HasPrefix(l, "-"):
			out.WriteString("\x1b[31m" + body + "\x1b[0m\n")
		case strings.HasPrefix(l, "+"):
			out.WriteString("\x1b[32m" + body + "\x1b[0m\n")
		default:
			out.WriteString(l)
		}
	}
	return []byte(out.String())
}
