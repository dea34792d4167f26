package replay

import "sort"

// SeqSet is a set of sequence numbers stored as sorted, disjoint, non-adjacent
// closed intervals. A consumer's applied set is almost always one interval
// [1, n] plus a few above it while messages arrive out of order, so it stays tiny.
type SeqSet struct {
	iv [][2]uint64
}

// Contains reports whether seq is in the set.
func (s *SeqSet) Contains(seq uint64) bool {
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] >= seq })
	return i < len(s.iv) && s.iv[i][0] <= seq
}

// Add inserts seq; it reports false if seq was already present.
func (s *SeqSet) Add(seq uint64) bool {
	return s.AddRange(seq, seq) > 0
}

// AddRange inserts [from, to] and returns how many sequences were new.
func (s *SeqSet) AddRange(from, to uint64) uint64 {
	if from == 0 || to < from {
		return 0
	}
	// Fast path: extending the last interval (the usual in-order case).
	if n := len(s.iv); n > 0 && from == s.iv[n-1][1]+1 {
		s.iv[n-1][1] = to
		return to - from + 1
	}
	// First interval that ends at or after from-1 (may merge with ours).
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1]+1 >= from })
	j := i
	lo, hi := from, to
	var covered uint64
	for j < len(s.iv) && s.iv[j][0] <= to+1 {
		a, b := s.iv[j][0], s.iv[j][1]
		// overlap of [a,b] with [from,to]
		oa, ob := max(a, from), min(b, to)
		if oa <= ob {
			covered += ob - oa + 1
		}
		lo, hi = min(lo, a), max(hi, b)
		j++
	}
	merged := [2]uint64{lo, hi}
	switch {
	case j == i:
		s.iv = append(s.iv, [2]uint64{})
		copy(s.iv[i+1:], s.iv[i:])
		s.iv[i] = merged
	default:
		s.iv[i] = merged
		s.iv = append(s.iv[:i+1], s.iv[j:]...)
	}
	return (to - from + 1) - covered
}

// Contiguous is the highest n such that [1, n] is in the set (0 if 1 is missing).
func (s *SeqSet) Contiguous() uint64 {
	if len(s.iv) == 0 || s.iv[0][0] != 1 {
		return 0
	}
	return s.iv[0][1]
}

// Max is the highest sequence in the set (0 if empty).
func (s *SeqSet) Max() uint64 {
	if len(s.iv) == 0 {
		return 0
	}
	return s.iv[len(s.iv)-1][1]
}

// Count is the number of sequences in the set.
func (s *SeqSet) Count() uint64 {
	var n uint64
	for _, r := range s.iv {
		n += r[1] - r[0] + 1
	}
	return n
}

// Gaps lists the missing ranges below Max.
func (s *SeqSet) Gaps() [][2]uint64 {
	var out [][2]uint64
	next := uint64(1)
	for _, r := range s.iv {
		if r[0] > next {
			out = append(out, [2]uint64{next, r[0] - 1})
		}
		next = r[1] + 1
	}
	return out
}

// Intervals returns a copy of the intervals (for checkpoints).
func (s *SeqSet) Intervals() [][2]uint64 { return append([][2]uint64(nil), s.iv...) }

// SetIntervals replaces the set (from a checkpoint); intervals must be sorted
// and disjoint, as Intervals returns them.
func (s *SeqSet) SetIntervals(iv [][2]uint64) { s.iv = append([][2]uint64(nil), iv...) }

// Remove deletes seq; it reports whether seq was present.
func (s *SeqSet) Remove(seq uint64) bool {
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] >= seq })
	if i == len(s.iv) || s.iv[i][0] > seq {
		return false
	}
	a, b := s.iv[i][0], s.iv[i][1]
	switch {
	case a == b:
		s.iv = append(s.iv[:i], s.iv[i+1:]...)
	case seq == a:
		s.iv[i][0] = a + 1
	case seq == b:
		s.iv[i][1] = b - 1
	default:
		s.iv = append(s.iv, [2]uint64{})
		copy(s.iv[i+2:], s.iv[i+1:])
		s.iv[i] = [2]uint64{a, seq - 1}
		s.iv[i+1] = [2]uint64{seq + 1, b}
	}
	return true
}

// Reset makes the set exactly [1, n] (after a snapshot covering 1..n).
func (s *SeqSet) Reset(n uint64) {
	s.iv = s.iv[:0]
	if n > 0 {
		s.iv = append(s.iv, [2]uint64{1, n})
	}
}
