; Functions for the refactor action (Java). Java has no async methods (futures are
; a library matter), so nothing is captured as @async.
;
; @function   a definition; @name its name; @parameters its parameter list.
; @container  a class, interface, enum or record: functions inside one are methods.

(method_declaration
  name: (identifier) @name
  parameters: (formal_parameters) @parameters) @function

(constructor_declaration
  name: (identifier) @name
  parameters: (formal_parameters) @parameters) @function

(class_declaration) @container
(interface_declaration) @container
(enum_declaration) @container
(record_declaration) @container
