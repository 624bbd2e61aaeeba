; Chunk boundaries for the context engine (JavaScript, JSX included; TypeScript
; inherits them).
;
; @chunk  a declaration that becomes its own chunk; nested declarations (methods
;         in a class) are where an oversized chunk splits.
; @name   the symbol that labels the chunk (`path::Class::method`).
;
; @leading  comments that belong to the declaration right below them.
;
; Patterns start at most two levels below the node being chunked (the file,
; or a definition being split), so `export > function` is reached. Methods are
; matched from their class body, so that an exported class being split
; (`export > class > class_body`) reaches them too.

; `export function f` is a chunk with the function inside it, as Python's
; decorators are; the inner match is folded into it (same end, same name).
(export_statement
  declaration: (_
    name: (_) @name)) @chunk

(export_statement
  declaration: (lexical_declaration
    (variable_declarator
      name: (identifier) @name
      value: (arrow_function)))) @chunk

(function_declaration
  name: (identifier) @name) @chunk

(generator_function_declaration
  name: (identifier) @name) @chunk

; A wildcard name: TypeScript's class names are type identifiers.
(class_declaration
  name: (_) @name) @chunk

(class_body
  (method_definition
    name: (_) @name) @chunk)

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: (arrow_function))) @chunk

(comment) @leading

; Comments above methods, reached from the class body as the methods are.
(class_body
  (comment) @leading)
