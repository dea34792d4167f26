package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestOptionsDocumentDefaults holds every exported Options type under
// svckit to the rule that a caller can tell what an unset field does:
// the package offers Default<Type>(), or the type's doc comment says
// what its zero values mean.
func TestOptionsDocumentDefaults(t *testing.T) {
	root := filepath.Join("..", "..")
	dir := filepath.Join(root, "svckit")
	type optType struct {
		name, file string
		doc        string
	}
	fset := token.NewFileSet()
	types := map[string][]optType{}       // package dir → its Options types
	funcs := map[string]map[string]bool{} // package dir → its functions
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		pkg := filepath.Dir(path)
		rel, _ := filepath.Rel(root, path)
		if funcs[pkg] == nil {
			funcs[pkg] = map[string]bool{}
		}
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					funcs[pkg][d.Name.Name] = true
				}
			case *ast.GenDecl:
				if d.Tok != token.TYPE {
					continue
				}
				for _, s := range d.Specs {
					ts := s.(*ast.TypeSpec)
					name := ts.Name.Name
					if !ts.Name.IsExported() || !strings.HasSuffix(name, "Options") {
						continue
					}
					doc := ts.Doc
					if doc == nil && d.Lparen == token.NoPos {
						doc = d.Doc // type X struct: the comment is the declaration's
					}
					// Joined, so that "zero value" wrapped over two lines counts.
					text := strings.Join(strings.Fields(doc.Text()), " ")
					types[pkg] = append(types[pkg], optType{name, filepath.ToSlash(rel), text})
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var bad []string
	for pkg, ts := range types {
		for _, ot := range ts {
			n++
			if funcs[pkg]["Default"+ot.name] || strings.Contains(strings.ToLower(ot.doc), "zero value") {
				continue
			}
			bad = append(bad, fmt.Sprintf("%s: %s has no Default%s and its doc comment does not say what its zero values mean", ot.file, ot.name, ot.name))
		}
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Error(b)
	}
	if n == 0 {
		t.Fatalf("no Options types found under %s", dir)
	}
	t.Logf("%d Options types checked", n)
}
