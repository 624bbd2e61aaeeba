; inherits: javascript
;
; Chunk boundaries for the context engine (TypeScript): JavaScript's, and the
; declarations only TypeScript has. The captures and the depth rule are described
; in javascript/chunks.scm.

(abstract_class_declaration
  name: (type_identifier) @name) @chunk

(interface_declaration
  name: (type_identifier) @name) @chunk

(type_alias_declaration
  name: (type_identifier) @name) @chunk

(enum_declaration
  name: (identifier) @name) @chunk

(internal_module
  name: (_) @name) @chunk
