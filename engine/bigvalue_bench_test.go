package engine

import "testing"

// BenchmarkCommitLargeValue: one 64 MiB value committed and read back.
func BenchmarkCommitLargeValue(b *testing.B) {
	in := diskInstance(b)
	db, _ := in.CreateDatabase("bench", "")
	v := make([]byte, 64<<20)
	for i := range v {
		v[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(v)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v[0] = byte(i)
		tx := db.Begin()
		tx.Store("s").Set("big", v)
		if _, err := tx.Commit(Journal); err != nil {
			b.Fatal(err)
		}
		if _, err := db.Get("s", []string{"big"}); err != nil {
			b.Fatal(err)
		}
	}
}
