package replay

import (
	"math/rand/v2"
	"testing"
)

func TestSeqSetMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var s SeqSet
		ref := map[uint64]bool{}
		for i := 0; i < 300; i++ {
			from := uint64(r.IntN(200) + 1)
			to := from + uint64(r.IntN(5))
			var want uint64
			for q := from; q <= to; q++ {
				if !ref[q] {
					want++
					ref[q] = true
				}
			}
			if got := s.AddRange(from, to); got != want {
				t.Fatalf("AddRange(%d,%d) = %d new, want %d (set %v)", from, to, got, want, s.iv)
			}
		}
		var max, count uint64
		for q := range ref {
			count++
			if q > max {
				max = q
			}
		}
		if s.Count() != count || s.Max() != max {
			t.Fatalf("count/max %d/%d, want %d/%d", s.Count(), s.Max(), count, max)
		}
		var contig uint64
		for ref[contig+1] {
			contig++
		}
		if s.Contiguous() != contig {
			t.Fatalf("contiguous %d want %d", s.Contiguous(), contig)
		}
		for q := uint64(1); q <= max+1; q++ {
			if s.Contains(q) != ref[q] {
				t.Fatalf("Contains(%d) = %v", q, !ref[q])
			}
		}
		var missing uint64
		for _, g := range s.Gaps() {
			for q := g[0]; q <= g[1]; q++ {
				if ref[q] {
					t.Fatalf("gap %v contains present %d", g, q)
				}
				missing++
			}
		}
		if missing+count != max {
			t.Fatalf("gaps cover %d, present %d, max %d", missing, count, max)
		}
		for i := 1; i < len(s.iv); i++ {
			if s.iv[i][0] <= s.iv[i-1][1]+1 {
				t.Fatalf("intervals not disjoint/merged: %v", s.iv)
			}
		}
	}
}

func TestSeqSetReset(t *testing.T) {
	var s SeqSet
	s.Add(5)
	s.Add(9)
	s.Reset(7)
	if s.Contiguous() != 7 || s.Contains(9) || s.Count() != 7 {
		t.Fatalf("after Reset(7): %v", s.iv)
	}
	if !s.Add(8) || s.Add(3) {
		t.Fatal("Add after Reset")
	}
}

func BenchmarkSeqSetInOrder(b *testing.B) {
	var s SeqSet
	for i := 0; i < b.N; i++ {
		s.Add(uint64(i + 1))
	}
}

func TestSeqSetRemoveMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 200; round++ {
		var s SeqSet
		ref := map[uint64]bool{}
		for i := 0; i < 300; i++ {
			q := uint64(r.IntN(100) + 1)
			if r.IntN(3) == 0 {
				if got := s.Remove(q); got != ref[q] {
					t.Fatalf("Remove(%d) = %v, want %v (set %v)", q, got, ref[q], s.iv)
				}
				delete(ref, q)
			} else {
				s.Add(q)
				ref[q] = true
			}
			for q := uint64(1); q <= 101; q++ {
				if s.Contains(q) != ref[q] {
					t.Fatalf("after step %d: Contains(%d) = %v (set %v)", i, q, !ref[q], s.iv)
				}
			}
			for k := 1; k < len(s.iv); k++ {
				if s.iv[k][0] <= s.iv[k-1][1]+1 {
					t.Fatalf("intervals not disjoint and non-adjacent: %v", s.iv)
				}
			}
		}
	}
}
