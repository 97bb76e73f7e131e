package policy

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// The decoder fills Go values from the generic tree that encoding/json makes
// of a document (with UseNumber), strictly: unknown fields and values of the
// wrong type are errors, each located by its field path, and decoding goes on
// so that one pass reports every problem. It reads the json tags of the
// target types, so the real k8s.io/api types decode as the API server would
// (field names are case-sensitive unless foldCase is set, which early
// Cilium's JSON rule lists need: they were read by encoding/json).

// genericDecoder is implemented by types that decode themselves.
type genericDecoder interface {
	decodeGeneric(d *decoder, path string, v any)
}

type decoder struct {
	p        *problems
	foldCase bool
}

var (
	genericDecoderType = reflect.TypeFor[genericDecoder]()
	unmarshalerType    = reflect.TypeFor[json.Unmarshaler]()
)

// describe names a generic value for error messages.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean %t", x)
	case json.Number:
		return "number " + x.String()
	case string:
		return fmt.Sprintf("string %q", x)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func (d *decoder) wrongType(path, want string, v any) {
	if _, isBool := v.(bool); isBool && want == "a string" {
		d.p.invalid(path, "want a string, got %s (YAML reads unquoted y, n, yes, no, on, off as booleans: quote the value)", describe(v))
		return
	}
	d.p.invalid(path, "want %s, got %s", want, describe(v))
}

// decode fills rv (settable) from v.
func (d *decoder) decode(path string, v any, rv reflect.Value) {
	if rv.CanAddr() {
		if pv := rv.Addr(); pv.Type().Implements(genericDecoderType) {
			pv.Interface().(genericDecoder).decodeGeneric(d, path, v)
			return
		}
	}
	if rv.Kind() == reflect.Pointer {
		if v == nil {
			rv.SetZero()
			return
		}
		nv := reflect.New(rv.Type().Elem())
		d.decode(path, v, nv.Elem())
		rv.Set(nv)
		return
	}
	if v == nil {
		// null leaves the zero value, as encoding/json does.
		return
	}
	if rv.CanAddr() && rv.Kind() != reflect.Interface {
		if pv := rv.Addr(); pv.Type().Implements(unmarshalerType) {
			raw, err := json.Marshal(v)
			if err == nil {
				err = pv.Interface().(json.Unmarshaler).UnmarshalJSON(raw)
			}
			if err != nil {
				d.p.invalid(path, "%s", cleanJSONError(err))
			}
			return
		}
	}
	switch rv.Kind() {
	case reflect.Interface:
		rv.Set(reflect.ValueOf(v))
	case reflect.Struct:
		d.decodeStruct(path, v, rv)
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			d.wrongType(path, "a list", v)
			return
		}
		s := reflect.MakeSlice(rv.Type(), len(list), len(list))
		for i, e := range list {
			d.decode(indexPath(path, i), e, s.Index(i))
		}
		rv.Set(s)
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			d.wrongType(path, "an object", v)
			return
		}
		if rv.Type().Key().Kind() != reflect.String {
			d.p.invalid(path, "cannot decode into %s", rv.Type())
			return
		}
		m := reflect.MakeMapWithSize(rv.Type(), len(obj))
		for _, k := range sortedKeys(obj) {
			ev := reflect.New(rv.Type().Elem()).Elem()
			d.decode(joinPath(path, k), obj[k], ev)
			m.SetMapIndex(reflect.ValueOf(k).Convert(rv.Type().Key()), ev)
		}
		rv.Set(m)
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			d.wrongType(path, "a string", v)
			return
		}
		rv.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.wrongType(path, "a boolean", v)
			return
		}
		rv.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := d.integer(path, v)
		if !ok {
			return
		}
		if rv.OverflowInt(n) {
			d.p.invalid(path, "%d is out of range", n)
			return
		}
		rv.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := d.integer(path, v)
		if !ok {
			return
		}
		if n < 0 || rv.OverflowUint(uint64(n)) {
			d.p.invalid(path, "%d is out of range", n)
			return
		}
		rv.SetUint(uint64(n))
	case reflect.Float32, reflect.Float64:
		num, ok := v.(json.Number)
		if !ok {
			d.wrongType(path, "a number", v)
			return
		}
		f, err := num.Float64()
		if err != nil {
			d.wrongType(path, "a number", v)
			return
		}
		rv.SetFloat(f)
	default:
		d.p.invalid(path, "cannot decode into %s", rv.Type())
	}
}

// integer reads an integral JSON number.
func (d *decoder) integer(path string, v any) (int64, bool) {
	num, ok := v.(json.Number)
	if !ok {
		d.wrongType(path, "an integer", v)
		return 0, false
	}
	if n, err := strconv.ParseInt(num.String(), 10, 64); err == nil {
		return n, true
	}
	f, err := num.Float64()
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		d.wrongType(path, "an integer", v)
		return 0, false
	}
	return int64(f), true
}

func (d *decoder) decodeStruct(path string, v any, rv reflect.Value) {
	obj, ok := v.(map[string]any)
	if !ok {
		d.wrongType(path, "an object", v)
		return
	}
	fields := fieldsOf(rv.Type())
	for _, k := range sortedKeys(obj) {
		f, ok := fields.byName[k]
		if !ok && d.foldCase {
			f, ok = fields.byFold[strings.ToLower(k)]
		}
		if !ok {
			d.p.invalid(joinPath(path, k), "unknown field")
			continue
		}
		fv := rv
		for _, i := range f.index {
			fv = fv.Field(i)
		}
		d.decode(joinPath(path, f.name), obj[k], fv)
	}
}

type structField struct {
	name  string
	index []int
}

type structFields struct {
	byName map[string]structField
	byFold map[string]structField
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if c, ok := fieldCache.Load(t); ok {
		return c.(*structFields)
	}
	fs := &structFields{byName: map[string]structField{}, byFold: map[string]structField{}}
	collectFields(t, nil, fs)
	fieldCache.Store(t, fs)
	return fs
}

func collectFields(t reflect.Type, index []int, fs *structFields) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		idx := append(append([]int(nil), index...), i)
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			collectFields(f.Type, idx, fs)
			continue
		}
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct {
			collectFields(f.Type, idx, fs)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		sf := structField{name: name, index: idx}
		fs.byName[name] = sf
		fs.byFold[strings.ToLower(name)] = sf
	}
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// cleanJSONError drops encoding/json's prefixes from an error of a custom
// UnmarshalJSON.
func cleanJSONError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "json: ")
	return s
}

// reflectValueOf returns the settable value a pointer points to.
func reflectValueOf(ptr any) reflect.Value { return reflect.ValueOf(ptr).Elem() }
