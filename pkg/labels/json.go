package labels

import "encoding/json"

// MarshalJSON renders the set as a list of `source:key=value` strings.
func (ls Labels) MarshalJSON() ([]byte, error) {
	ss := ls.Strings()
	if ss == nil {
		ss = []string{}
	}
	return json.Marshal(ss)
}

// UnmarshalJSON reads a list of `source:key=value` strings (a label without
// a source gets unspec).
func (ls *Labels) UnmarshalJSON(b []byte) error {
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return err
	}
	out, err := ParseList(ss, SourceUnspec)
	if err != nil {
		return err
	}
	*ls = out
	return nil
}
