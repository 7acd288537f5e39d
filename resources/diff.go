package resources

import (
	"bytes"
	"fmt"
	"strings"
)

// maxDiffCells bounds the LCS table; larger inputs diff as one hunk.
const maxDiffCells = 16 << 20

// UnifiedDiff returns a unified diff (3 lines of context) from a to b, or
// nothing when they are equal.
func UnifiedDiff(aName, bName string, a, b []byte) []byte {
	if bytes.Equal(a, b) {
		return nil
	}
	al, bl := splitLines(a), splitLines(b)
	// Trim the common head and tail: the LCS only runs on the middle.
	pre := 0
	for pre < len(al) && pre < len(bl) && al[pre] == bl[pre] {
		pre++
	}
	suf := 0
	for suf < len(al)-pre && suf < len(bl)-pre && al[len(al)-1-suf] == bl[len(bl)-1-suf] {
		suf++
	}
	ops := make([]byte, 0, len(al)+len(bl)) // ' ', '-', '+'
	lines := make([]string, 0, len(al)+len(bl))
	for i := 0; i < pre; i++ {
		ops, lines = append(ops, ' '), append(lines, al[i])
	}
	ma, mb := al[pre:len(al)-suf], bl[pre:len(bl)-suf]
	if len(ma)*len(mb) > maxDiffCells {
		for _, l := range ma {
			ops, lines = append(ops, '-'), append(lines, l)
		}
		for _, l := range mb {
			ops, lines = append(ops, '+'), append(lines, l)
		}
	} else {
		n, m := len(ma), len(mb)
		lcs := make([][]int32, n+1)
		for i := range lcs {
			lcs[i] = make([]int32, m+1)
		}
		for i := n - 1; i >= 0; i-- {
			for j := m - 1; j >= 0; j-- {
				if ma[i] == mb[j] {
					lcs[i][j] = lcs[i+1][j+1] + 1
				} else {
					lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
				}
			}
		}
		i, j := 0, 0
		for i < n || j < m {
			switch {
			case i < n && j < m && ma[i] == mb[j]:
				ops, lines = append(ops, ' '), append(lines, ma[i])
				i, j = i+1, j+1
			case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
				ops, lines = append(ops, '-'), append(lines, ma[i])
				i++
			default:
				ops, lines = append(ops, '+'), append(lines, mb[j])
				j++
			}
		}
	}
	for i := len(al) - suf; i < len(al); i++ {
		ops, lines = append(ops, ' '), append(lines, al[i])
	}

	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", aName, bName)
	const ctx = 3
	k := 0
	for k < len(ops) {
		if ops[k] == ' ' {
			k++
			continue
		}
		// A hunk: from ctx before this change to ctx after the last change
		// that is within 2*ctx of the previous one.
		start := max(0, k-ctx)
		end := k
		for end < len(ops) {
			if ops[end] != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run] == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*ctx {
				break
			}
			end = run
		}
		stop := min(len(ops), end+ctx)
		aStart, bStart := 0, 0
		for x := 0; x < start; x++ {
			if ops[x] != '+' {
				aStart++
			}
			if ops[x] != '-' {
				bStart++
			}
		}
		aLen, bLen := 0, 0
		for x := start; x < stop; x++ {
			if ops[x] != '+' {
				aLen++
			}
			if ops[x] != '-' {
				bLen++
			}
		}
		fmt.Fprintf(&out, "@@ -%s +%s @@\n", hunkRange(aStart, aLen), hunkRange(bStart, bLen))
		for x := start; x < stop; x++ {
			out.WriteByte(ops[x])
			out.WriteString(lines[x])
			if !strings.HasSuffix(lines[x], "\n") {
				out.WriteString("\n\\ No newline at end of file\n")
			}
		}
		k = stop
	}
	return []byte(out.String())
}

func hunkRange(start, n int) string {
	if n == 0 {
		return fmt.Sprintf("%d,0", start)
	}
	if n == 1 {
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}

func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.SplitAfter(string(b), "\n")[:bytes.Count(b, []byte("\n"))+boolInt(b[len(b)-1] != '\n')]
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
