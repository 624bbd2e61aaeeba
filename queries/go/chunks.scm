; Chunk boundaries for the context engine (Go).
;
; @chunk  a declaration that becomes its own chunk.
; @name   the symbol that labels the chunk (`path::name`).
;
; @leading  comments that belong to the declaration right below them (doc comments).

(function_declaration
  name: (identifier) @name) @chunk

(method_declaration
  name: (field_identifier) @name) @chunk

(type_declaration
  (type_spec
    name: (type_identifier) @name)) @chunk

(comment) @leading
