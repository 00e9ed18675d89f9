# Code generation from proto/: the schemas are the single source of truth.
#
#   jb_proto_c       static library of protoc-c output (build/gen/...), linked into libjimbot
#   jb_proto_cpp     static library of protoc --cpp_out output (build/gen-cpp/...)
#   jb_python        the importable Python package in build/python/ (stubs + python/jimbot)
#   proto/descriptor_set.binpb (build tree): the descriptor set that `make schema-check`
#                    compares with the committed baseline proto/baseline.binpb
#
# Generated files are never committed. Adding a .proto under proto/ is enough:
# the glob below picks it up at the next configure.
set(JB_PROTO_ROOT ${CMAKE_SOURCE_DIR}/proto)
set(JB_GEN_C ${CMAKE_BINARY_DIR}/gen)
set(JB_GEN_CPP ${CMAKE_BINARY_DIR}/gen-cpp)
set(JB_PYTHON_DIR ${CMAKE_BINARY_DIR}/python)
set(JB_DESCRIPTOR_SET ${CMAKE_BINARY_DIR}/proto/descriptor_set.binpb)

file(GLOB_RECURSE JB_PROTOS CONFIGURE_DEPENDS RELATIVE ${JB_PROTO_ROOT} ${JB_PROTO_ROOT}/*.proto)
list(SORT JB_PROTOS)

set(_c_srcs)
set(_cpp_srcs)
set(_py_outs)
set(_abs_protos)
foreach(rel IN LISTS JB_PROTOS)
  string(REGEX REPLACE "\\.proto$" "" stem ${rel})
  set(abs ${JB_PROTO_ROOT}/${rel})
  list(APPEND _abs_protos ${abs})
  add_custom_command(
    OUTPUT ${JB_GEN_C}/${stem}.pb-c.c ${JB_GEN_C}/${stem}.pb-c.h
    COMMAND ${CMAKE_COMMAND} -E make_directory ${JB_GEN_C}
    COMMAND ${PROTOC_C} -I${JB_PROTO_ROOT} --c_out=${JB_GEN_C} ${abs}
    DEPENDS ${abs} VERBATIM COMMENT "protoc-c ${rel}")
  add_custom_command(
    OUTPUT ${JB_GEN_CPP}/${stem}.pb.cc ${JB_GEN_CPP}/${stem}.pb.h
    COMMAND ${CMAKE_COMMAND} -E make_directory ${JB_GEN_CPP}
    COMMAND ${PROTOC} -I${JB_PROTO_ROOT} --cpp_out=${JB_GEN_CPP} ${abs}
    DEPENDS ${abs} VERBATIM COMMENT "protoc --cpp_out ${rel}")
  add_custom_command(
    OUTPUT ${JB_PYTHON_DIR}/${stem}_pb2.py ${JB_PYTHON_DIR}/${stem}_pb2_grpc.py
    COMMAND ${CMAKE_COMMAND} -E make_directory ${JB_PYTHON_DIR}
    COMMAND ${PROTOC} -I${JB_PROTO_ROOT} --python_out=${JB_PYTHON_DIR}
            --grpc_out=${JB_PYTHON_DIR} --plugin=protoc-gen-grpc=${GRPC_PYTHON_PLUGIN} ${abs}
    DEPENDS ${abs} VERBATIM COMMENT "protoc --python_out ${rel}")
  list(APPEND _c_srcs ${JB_GEN_C}/${stem}.pb-c.c)
  list(APPEND _cpp_srcs ${JB_GEN_CPP}/${stem}.pb.cc)
  list(APPEND _py_outs ${JB_PYTHON_DIR}/${stem}_pb2.py)
endforeach()

# descriptor.proto, for the schema checker, which decodes descriptor sets with protobuf-c.
set(_desc_proto /usr/include/google/protobuf/descriptor.proto)
add_custom_command(
  OUTPUT ${JB_GEN_C}/google/protobuf/descriptor.pb-c.c ${JB_GEN_C}/google/protobuf/descriptor.pb-c.h
  COMMAND ${CMAKE_COMMAND} -E make_directory ${JB_GEN_C}
  COMMAND ${PROTOC_C} -I/usr/include --c_out=${JB_GEN_C} ${_desc_proto}
  DEPENDS ${_desc_proto} VERBATIM COMMENT "protoc-c descriptor.proto")
add_library(jb_proto_descriptor STATIC ${JB_GEN_C}/google/protobuf/descriptor.pb-c.c)
target_include_directories(jb_proto_descriptor PUBLIC ${JB_GEN_C})
target_link_libraries(jb_proto_descriptor PUBLIC PkgConfig::PROTOBUF_C)

add_library(jb_proto_c STATIC ${_c_srcs})
target_include_directories(jb_proto_c PUBLIC ${JB_GEN_C})
target_link_libraries(jb_proto_c PUBLIC PkgConfig::PROTOBUF_C)
set_target_properties(jb_proto_c PROPERTIES POSITION_INDEPENDENT_CODE ON)

add_library(jb_proto_cpp STATIC ${_cpp_srcs})
target_include_directories(jb_proto_cpp PUBLIC ${JB_GEN_CPP})
target_link_libraries(jb_proto_cpp PUBLIC PkgConfig::PROTOBUF_CXX)

add_custom_command(
  OUTPUT ${JB_DESCRIPTOR_SET}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/proto
  COMMAND ${PROTOC} -I${JB_PROTO_ROOT} --include_source_info
          --descriptor_set_out=${JB_DESCRIPTOR_SET} ${JB_PROTOS}
  WORKING_DIRECTORY ${JB_PROTO_ROOT}
  DEPENDS ${_abs_protos} VERBATIM COMMENT "protoc --descriptor_set_out")
add_custom_target(jb_descriptor_set ALL DEPENDS ${JB_DESCRIPTOR_SET})

# The Python package: generated modules plus the hand-written ones in python/.
file(GLOB_RECURSE _py_src CONFIGURE_DEPENDS RELATIVE ${CMAKE_SOURCE_DIR}/python
     ${CMAKE_SOURCE_DIR}/python/*.py)
set(_py_copied)
foreach(rel IN LISTS _py_src)
  add_custom_command(
    OUTPUT ${JB_PYTHON_DIR}/${rel}
    COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_SOURCE_DIR}/python/${rel} ${JB_PYTHON_DIR}/${rel}
    DEPENDS ${CMAKE_SOURCE_DIR}/python/${rel} VERBATIM)
  list(APPEND _py_copied ${JB_PYTHON_DIR}/${rel})
endforeach()
add_custom_command(
  OUTPUT ${JB_PYTHON_DIR}/.packages
  COMMAND ${JB_PYTHON} ${CMAKE_SOURCE_DIR}/scripts/py_packages.py ${JB_PYTHON_DIR}/jimbot
  COMMAND ${CMAKE_COMMAND} -E touch ${JB_PYTHON_DIR}/.packages
  DEPENDS ${_py_outs} ${_py_copied} ${CMAKE_SOURCE_DIR}/scripts/py_packages.py VERBATIM
  COMMENT "Python package in ${JB_PYTHON_DIR}")
add_custom_target(jb_python ALL DEPENDS ${JB_PYTHON_DIR}/.packages)
