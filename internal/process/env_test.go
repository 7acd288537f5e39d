package process

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseEnvFile(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    [][2]string
		wantErr string
	}{
		"plain":        {in: "A=1\nB = two words \n", want: [][2]string{{"A", "1"}, {"B", "two words"}}},
		"comments":     {in: "# c\n; c\n\nA=1\n", want: [][2]string{{"A", "1"}}},
		"quotes":       {in: `A="x \"y\" \$z"` + "\nB='a $b'\n", want: [][2]string{{"A", `x "y" $z`}, {"B", "a $b"}}},
		"export":       {in: "export A=1\n", want: [][2]string{{"A", "1"}}},
		"continuation": {in: "A=one \\\ntwo\n", want: [][2]string{{"A", "one two"}}},
		"no equals":    {in: "A=1\nnonsense\n", wantErr: "2: "},
		"bad name":     {in: "1A=x\n", wantErr: "1: "},
		"open quote":   {in: "A=\"x\n", wantErr: "1: A: unterminated quote"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseEnvFile([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want prefix %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// FuzzEnvFile checks that parsing never panics and that what WriteEnvFile
// writes reads back unchanged.
func FuzzEnvFile(f *testing.F) {
	f.Add([]byte("A=1\nB=\"x y\"\n# c\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		vars, err := parseEnvFile(b)
		if err != nil {
			return
		}
		for i := range vars {
			if strings.ContainsAny(vars[i][1], "\r") {
				return
			}
		}
		back, err := parseEnvFile(WriteEnvFile(vars))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", WriteEnvFile(vars), err)
		}
		if len(vars) != len(back) {
			t.Fatalf("round trip: %q → %q", vars, back)
		}
		for i := range vars {
			if vars[i] != back[i] {
				t.Fatalf("round trip: %q → %q", vars, back)
			}
		}
	})
}
