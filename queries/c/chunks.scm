; Chunk boundaries for the context engine (C).
;
; @chunk  a definition that becomes its own chunk.
; @name   the symbol that labels the chunk (`path::name`).
;
; @leading  comments that belong to the definition right below them.

(function_definition
  declarator: (function_declarator
    declarator: (identifier) @name)) @chunk

; `char *name(...)`: the function declarator sits inside a pointer declarator.
(function_definition
  declarator: (pointer_declarator
    declarator: (function_declarator
      declarator: (identifier) @name))) @chunk

(type_definition
  declarator: (type_identifier) @name) @chunk

(struct_specifier
  name: (type_identifier) @name
  body: (field_declaration_list)) @chunk

(enum_specifier
  name: (type_identifier) @name
  body: (enumerator_list)) @chunk

(preproc_function_def
  name: (identifier) @name) @chunk

(comment) @leading
