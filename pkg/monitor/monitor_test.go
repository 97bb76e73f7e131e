package monitor

import "testing"

func TestHubFiltersAndReportsVerdictInterest(t *testing.T) {
	var wants []bool
	h := NewHub(func(w bool) { wants = append(wants, w) })
	drops := h.Subscribe([]string{TypeDrop})
	all := h.Subscribe(nil)
	h.Publish(Event{Type: TypeDrop, Reason: "x"})
	h.Publish(Event{Type: TypePolicyVerdict})
	if len(drops.C) != 1 || len(all.C) != 2 {
		t.Fatalf("drop subscriber got %d, all got %d", len(drops.C), len(all.C))
	}
	all.Close()
	drops.Close()
	if len(wants) != 4 || wants[0] || !wants[1] || wants[3] {
		t.Fatalf("verdict interest notifications %v", wants)
	}
}

func TestHubDropsForSlowSubscribers(t *testing.T) {
	h := NewHub(nil)
	s := h.Subscribe(nil)
	defer s.Close()
	for i := 0; i < cap(s.C)+10; i++ {
		h.Publish(Event{Type: TypeDrop})
	}
	if s.Lost() != 10 {
		t.Fatalf("lost %d, want 10", s.Lost())
	}
}
