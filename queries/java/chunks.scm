; Chunk boundaries for the context engine (Java).
;
; @chunk  a declaration that becomes its own chunk; nested declarations (methods
;         in a class) are where an oversized chunk splits.
; @name   the symbol that labels the chunk (`path::Class::method`).
;
; @leading  comments that belong to the declaration right below them (Javadoc).
;
; Patterns start at most two levels below the node being chunked (the file,
; or a declaration being split), so `class > class_body > method` is reached.

(class_declaration
  name: (identifier) @name) @chunk

(interface_declaration
  name: (identifier) @name) @chunk

(enum_declaration
  name: (identifier) @name) @chunk

(record_declaration
  name: (identifier) @name) @chunk

(method_declaration
  name: (identifier) @name) @chunk

(constructor_declaration
  name: (identifier) @name) @chunk

(line_comment) @leading
(block_comment) @leading
