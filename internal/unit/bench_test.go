package unit

import (
	"os"
	"testing"
)

// BenchmarkParse parses the seed's nginx@.service template and makes an
// instance of it, as the engine does for each new unit body.
func BenchmarkParse(b *testing.B) {
	body, err := os.ReadFile("testdata/good/nginx@.service")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		f, err := Parse("nginx@.service", body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Instantiate("1"); err != nil {
			b.Fatal(err)
		}
	}
}
