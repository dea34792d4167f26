package bench

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// examplesHop is the examples module's copy of hop.go (bin/hop), four
// levels up from this package.
var examplesHop = filepath.Join("..", "..", "..", "..", "examples", "hop", "hop.go")

// TestHopIsTheExamplesHop: bin/hop (examples/hop, a module of its own) and
// `svckit bench hop` run the same hop code, so that importer_hop_ratio
// measures the build alone. The examples module cannot import this
// package (it is internal to the CLI), so it has a copy of hop.go: the
// two files must declare the same things with the same source (doc
// comments aside) and import the same packages.
func TestHopIsTheExamplesHop(t *testing.T) {
	ours := hopDecls(t, "hop.go")
	theirs := hopDecls(t, examplesHop)
	for _, k := range []string{"import", "func Hop", "func HopSpec", "type HopOptions", "type HopResult"} {
		if _, ok := ours[k]; !ok {
			t.Fatalf("hop.go has no %s: the test compares too little", k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(ours)) {
		switch got, ok := theirs[k]; {
		case !ok:
			t.Errorf("%s lacks %s, which hop.go has: copy it over", examplesHop, k)
		case got != ours[k]:
			t.Errorf("%s in %s differs from hop.go's: the two builds of the hop must run the same code\n--- hop.go:\n%s\n--- %s:\n%s", k, examplesHop, ours[k], examplesHop, got)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(theirs)) {
		if _, ok := ours[k]; !ok {
			t.Errorf("%s has %s, which hop.go has not: the hop's code is hop.go's, nothing else", examplesHop, k)
		}
	}
	// And the program is that and its main.go (service.Main(HopSpec)).
	files, _ := filepath.Glob(filepath.Join(filepath.Dir(examplesHop), "*.go"))
	var names []string
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			names = append(names, filepath.Base(f))
		}
	}
	if !slices.Equal(names, []string{"hop.go", "main.go"}) {
		t.Errorf("%s holds %v; want hop.go (the copy) and main.go only: any other code would be a second thing the two builds differ by", filepath.Dir(examplesHop), names)
	}
}

// hopDecls returns the file's top-level declarations, by kind and name,
// with their source from the keyword to the end (a doc comment is not
// part of it, comments inside are), and "import": its imports, sorted.
func hopDecls(t *testing.T, file string) map[string]string {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	text := func(n ast.Node) string {
		return string(src[fset.Position(n.Pos()).Offset:fset.Position(n.End()).Offset])
	}
	decls := map[string]string{}
	add := func(key, s string) {
		if _, dup := decls[key]; dup {
			t.Fatalf("%s: %s declared twice", file, key)
		}
		decls[key] = s
	}
	var imports []string
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			key := "func " + d.Name.Name
			if d.Recv != nil && len(d.Recv.List) > 0 {
				key = "func (" + text(d.Recv.List[0].Type) + ") " + d.Name.Name
			}
			add(key, text(d))
		case *ast.GenDecl:
			if d.Tok == token.IMPORT {
				for _, s := range d.Specs {
					imports = append(imports, text(s))
				}
				continue
			}
			var names []string
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					names = append(names, s.Name.Name)
				case *ast.ValueSpec:
					for _, n := range s.Names {
						names = append(names, n.Name)
					}
				}
			}
			add(d.Tok.String()+" "+strings.Join(names, ", "), text(d))
		}
	}
	slices.Sort(imports)
	add("import", strings.Join(imports, "\n"))
	return decls
}
